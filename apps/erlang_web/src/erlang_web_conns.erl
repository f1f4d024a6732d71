%% @doc Starts and counts connection processes, and enforces max_connections.
%%
%% Connection processes are linked to this one (it traps exits), so the count is exact even when
%% a connection crashes, and all connections die if this process does.
%%
%% Beyond max_connections a new connection is still accepted and answered at once (see
%% erlang_web_conn, mode reject): 503 with `Connection: close', or the real health answer for
%% the health check's path. The alternative, leaving it in the kernel's backlog until a slot
%% frees up, makes the client (or the load balancer) wait for a timeout, and fails the health
%% check of an instance that is only busy. The answering processes are bounded too: beyond
%% twice max_connections of them (at least ?MIN_ANSWERING), new connections are closed without
%% an answer. (Twice: under a flood, about one per client over the limit is waiting for its
%% client to close after the answer, and the health check must still find one free.)
%%
%% Both bounds also stay under the VM's open-files limit (each socket is a descriptor): running
%% out of descriptors would leave new connections waiting in the backlog instead. Serving
%% connections leave room for ?FD_ANSWERS sockets that are answered 503 or the health answer.
%%
%% It also ends connections whose response is not sent within send_timeout (erlang_web_conn
%% arms a timer that sends {send_timeout, Pid} here while it is blocked in a send).
-module(erlang_web_conns).

-behaviour(gen_server).

-export([start_link/0]).
-export([start_connection/0]).
-export([count/0]).
-export([drain/1]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([code_change/3]).

%% Descriptors kept for everything but connections: the listen socket, mnesia's files, the VM's own.
-define(FD_OTHER, 64).
%% Descriptors that serving connections leave for connections answered over the limit.
-define(FD_ANSWERS, 64).
%% The fewest connections answered over the limit at once, however low max_connections is: each
%% lingers a little after its answer (erlang_web_conn's close).
-define(MIN_ANSWERING, 64).

-record(state, {opts :: erlang_web_conn:opts(),
                max :: pos_integer(),
                %% the most sockets open at once: the descriptor limit less ?FD_OTHER; and the
                %% most while a connection is to be served (?FD_ANSWERS fewer)
                sockets :: non_neg_integer() | infinity,
                serve_sockets :: integer() | infinity,
                serving = 0 :: non_neg_integer(),
                rejecting = 0 :: non_neg_integer(),
                conns = dict:new() :: dict:dict(pid(), erlang_web_conn:mode()),
                drain_from :: undefined | {pid(), term()},
                drain_timer :: undefined | reference()}).

%% @doc Start the tracker (registered as erlang_web_conns).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Start a process for a newly accepted connection: one that serves it, or one that answers
%% 503 when max_connections are open; `{error, overloaded}' when even that is over its limit.
-spec start_connection() -> {ok, pid()} | {error, overloaded}.
start_connection() ->
    gen_server:call(?MODULE, start_connection).

%% @doc How many connections are being served.
-spec count() -> non_neg_integer().
count() ->
    gen_server:call(?MODULE, count).

%% @doc Tell every connection to close once its current request is answered, and wait until
%% they have, at most Timeout ms.
-spec drain(non_neg_integer()) -> ok | {timeout, pos_integer()}.
drain(Timeout) ->
    gen_server:call(?MODULE, {drain, Timeout}, infinity).

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    process_flag(trap_exit, true),
    %% Each accept waits for this process (start_connection/0): it runs at the acceptors'
    %% priority (see erlang_web_acceptor), and does little per call.
    process_flag(priority, high),
    Max = erlang_web_config:get(max_connections),
    Sockets = case max_fds() of
                  infinity -> infinity;
                  Fds -> erlang:max(0, Fds - ?FD_OTHER)
              end,
    Needed = 3 * Max + ?FD_OTHER,
    _ = case Sockets of
            N when is_integer(N), N + ?FD_OTHER < Needed ->
                error_logger:warning_msg(
                  "erlang_web: the open-files limit (~b) is below what max_connections ~b "
                  "needs (~b: twice as many answered 503, and ~b more); connections beyond ~b "
                  "get no answer. Raise the limit (ulimit -n) to at least ~b.~n",
                  [N + ?FD_OTHER, Max, Needed, ?FD_OTHER, N, Needed]);
            _ -> ok
        end,
    Serve = case Sockets of
                infinity -> infinity;
                _ -> Sockets - ?FD_ANSWERS
            end,
    {ok, #state{opts = erlang_web_conn:opts(), max = Max, sockets = Sockets,
                serve_sockets = Serve}}.

%% @private
-spec handle_call(term(), {pid(), term()}, #state{}) ->
          {reply, term(), #state{}} | {noreply, #state{}}.
handle_call(start_connection, _From,
            #state{max = Max, sockets = Sockets, serve_sockets = Serve, serving = S,
                   rejecting = R} = State) ->
    Open = S + R,
    %% (an integer compares less than the atom infinity)
    if
        S < Max, Open < Serve -> start(serve, State);
        R < 2 * Max orelse R < ?MIN_ANSWERING, Open < Sockets -> start(reject, State);
        true -> {reply, {error, overloaded}, State}
    end;
handle_call(count, _From, #state{serving = S} = State) ->
    {reply, S, State};
handle_call({drain, _Timeout}, _From, #state{serving = 0} = State) ->
    {reply, ok, State};
handle_call({drain, Timeout}, From, #state{conns = Conns} = State) ->
    _ = dict:fold(fun(Pid, serve, ok) -> erlang_web_conn:drain(Pid);
                     (_, reject, ok) -> ok
                  end, ok, Conns),
    TRef = erlang:send_after(Timeout, self(), drain_timeout),
    {noreply, State#state{drain_from = From, drain_timer = TRef}}.

start(Mode, #state{opts = Opts, conns = Conns} = State) ->
    {ok, Pid} = erlang_web_conn:start_link(Mode, Opts),
    {reply, {ok, Pid}, bump(Mode, 1, State#state{conns = dict:store(Pid, Mode, Conns)})}.

bump(serve, D, #state{serving = S} = State) -> State#state{serving = S + D};
bump(reject, D, #state{rejecting = R} = State) -> State#state{rejecting = R + D}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({'EXIT', Pid, Reason}, #state{conns = Conns} = State) ->
    case dict:find(Pid, Conns) of
        {ok, Mode} ->
            State1 = bump(Mode, -1, State#state{conns = dict:erase(Pid, Conns)}),
            {noreply, maybe_drained(State1)};
        error ->
            %% Not a connection: the parent supervisor (handled by gen_server) or a stray link.
            {stop, Reason, State}
    end;
handle_info({send_timeout, Pid}, #state{conns = Conns} = State) ->
    _ = case dict:is_key(Pid, Conns) of
            true ->
                ok = erlang_web_events:count(send_timeout),
                exit(Pid, kill);
            false -> ok
        end,
    {noreply, State};
handle_info(drain_timeout, #state{drain_from = From, serving = S} = State)
  when From =/= undefined ->
    gen_server:reply(From, {timeout, S}),
    {noreply, State#state{drain_from = undefined, drain_timer = undefined}};
handle_info(_Msg, State) ->
    {noreply, State}.

maybe_drained(#state{drain_from = From, serving = 0, drain_timer = TRef} = State)
  when From =/= undefined ->
    _ = erlang:cancel_timer(TRef),
    gen_server:reply(From, ok),
    State#state{drain_from = undefined, drain_timer = undefined};
maybe_drained(State) ->
    State.

%% The VM's limit on open descriptors, infinity where it does not report one (LING has none: its
%% erlang:system_info/1 has no check_io clause). OTP 17 reports one poll set, later releases a
%% list of them.
max_fds() ->
    try erlang:system_info(check_io) of
        Info -> find_max_fds(Info)
    catch
        _:_ -> infinity
    end.

find_max_fds([{max_fds, N} | _]) when is_integer(N), N > 0 -> N;
find_max_fds([Set | Rest]) when is_list(Set) ->
    case find_max_fds(Set) of
        infinity -> find_max_fds(Rest);
        N -> N
    end;
find_max_fds([_ | Rest]) -> find_max_fds(Rest);
find_max_fds(_) -> infinity.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    ok.

%% @private
-spec code_change(term(), #state{}, term()) -> {ok, #state{}}.
code_change(_OldVsn, State, _Extra) ->
    {ok, State}.
