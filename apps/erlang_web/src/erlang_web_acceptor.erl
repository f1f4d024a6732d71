%% @doc An acceptor: accepts connections and hands each to a new connection process.
-module(erlang_web_acceptor).

-export([start_link/1]).
-export([loop/1]).

%% How long to back off when the node is out of file descriptors.
-define(EMFILE_BACKOFF_MS, 100).

%% @doc Start an acceptor on a listen socket, linked to the caller (the acceptor supervisor).
%%
%% Acceptors run at high priority. Under load, thousands of connection processes are runnable;
%% at normal priority an acceptor would wait its turn behind all of them for each accept, the
%% kernel's accept queue would fill, and new connections (the load balancer's health check among
%% them) would have their SYNs dropped and wait seconds for retransmits before anyone answered
%% them, even with a 503. An acceptor blocks in accept when the queue is empty, so it takes CPU
%% only in proportion to new connections.
-spec start_link(inet:socket()) -> {ok, pid()}.
start_link(LSock) ->
    {ok, proc_lib:spawn_opt(?MODULE, loop, [LSock], [link, {priority, high}])}.

%% @doc Accept forever. Recursion goes through ?MODULE so a code upgrade takes effect.
-spec loop(inet:socket()) -> no_return().
loop(LSock) ->
    case gen_tcp:accept(LSock) of
        {ok, Sock} ->
            hand_off(Sock),
            ?MODULE:loop(LSock);
        {error, Limit} when Limit =:= emfile; Limit =:= enfile; Limit =:= system_limit ->
            %% Out of file descriptors (or VM ports): accepting again at once would spin.
            %% Connections free descriptors as they close; wait a little. Counted, and logged at
            %% a bounded rate by erlang_web_events, not once per accept.
            ok = erlang_web_events:count(emfile),
            receive after ?EMFILE_BACKOFF_MS -> ok end,
            ?MODULE:loop(LSock);
        {error, closed} ->
            %% The listen socket is gone: the supervisors restart the listener and the pool.
            exit(closed);
        {error, _Other} ->
            %% econnaborted and the like concern one connection only.
            ?MODULE:loop(LSock)
    end.

hand_off(Sock) ->
    case erlang_web_conns:start_connection() of
        {ok, Pid} ->
            %% LING gives an accepted socket default options, not the listen socket's
            %% (cloudozer/ling core/ol_tcp_acc.c), so Nagle's algorithm is turned off here too.
            _ = inet:setopts(Sock, [{nodelay, true}]),
            case gen_tcp:controlling_process(Sock, Pid) of
                ok ->
                    Pid ! {?MODULE, socket, Sock},
                    ok;
                {error, _} ->
                    gen_tcp:close(Sock),
                    exit(Pid, kill),
                    ok
            end;
        {error, overloaded} ->
            ok = erlang_web_events:count(no_answer),
            gen_tcp:close(Sock)
    end.
