%% @doc Owns the listen socket (so it lives as long as this supervised process, not as long as
%% whoever started the application), and drains the listener on shutdown.
-module(erlang_web_listener).

-behaviour(gen_server).

-export([start_link/0]).
-export([socket/0]).
-export([port/0]).
-export([drain/1]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([code_change/3]).

-record(state, {lsock :: inet:socket() | undefined,
                port :: inet:port_number()}).

%% @doc Open the listen socket on the configured port.
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The listen socket (for the acceptors).
-spec socket() -> inet:socket().
socket() ->
    gen_server:call(?MODULE, socket).

%% @doc The port actually listened on (differs from the configured one when that is 0).
-spec port() -> inet:port_number().
port() ->
    gen_server:call(?MODULE, port).

%% @doc Stop accepting, close the listen socket, then wait up to Timeout ms for the open
%% connections to finish the request they are on (idle ones close at once). Called from
%% erlang_web_app:prep_stop/1; never fails.
-spec drain(timeout()) -> ok.
drain(Timeout) ->
    ok = erlang_web_status:set(listener, draining),
    try
        _ = supervisor:terminate_child(erlang_web_listener_sup, erlang_web_acceptor_sup),
        ok = gen_server:call(?MODULE, close),
        case erlang_web_conns:drain(Timeout) of
            ok ->
                ok;
            {timeout, Left} ->
                error_logger:warning_msg("erlang_web: ~b connection(s) still open after "
                                         "draining for ~p ms~n", [Left, Timeout])
        end
    catch
        exit:Reason ->
            error_logger:warning_msg("erlang_web: draining the listener failed: ~p~n", [Reason])
    end.

%% @private
-spec init([]) -> {ok, #state{}} | {stop, term()}.
init([]) ->
    process_flag(trap_exit, true),
    ok = erlang_web_status:set(listener, starting),
    Port = erlang_web_config:get(port),
    %% Accepted sockets start binary, raw and passive, on OTP (which copies the listen socket's
    %% options) as on LING (which copies only packet and binary, core/ol_tcp_acc.c): the
    %% connection reads them in that one mode (see erlang_web_conn). No packet_size or
    %% send_timeout here: LING would not apply them, so the connection keeps those limits itself.
    %% backlog: a burst of new connections waits in the kernel's queue instead of having its
    %% SYNs dropped (then retried after 1 s, 3 s, ...); Linux caps it at net.core.somaxconn,
    %% 4096 by default since 5.4.
    Opts = [binary, {packet, raw}, {active, false}, {reuseaddr, true},
            {backlog, 4096}, {nodelay, true}],
    case gen_tcp:listen(Port, Opts) of
        {ok, LSock} ->
            {ok, Actual} = inet:port(LSock),
            {ok, #state{lsock = LSock, port = Actual}};
        {error, Reason} ->
            error_logger:error_msg("erlang_web: cannot listen on port ~p: ~p~n", [Port, Reason]),
            {stop, {listen, Port, Reason}}
    end.

%% @private
-spec handle_call(socket | port | close, {pid(), term()}, #state{}) ->
          {reply, term(), #state{}}.
handle_call(socket, _From, #state{lsock = LSock} = State) ->
    {reply, LSock, State};
handle_call(port, _From, #state{port = Port} = State) ->
    {reply, Port, State};
handle_call(close, _From, #state{lsock = LSock} = State) ->
    _ = case LSock of
            undefined -> ok;
            _ -> gen_tcp:close(LSock)
        end,
    {reply, ok, State#state{lsock = undefined}}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(_Msg, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{lsock = LSock}) ->
    ok = erlang_web_status:set(listener, down),
    _ = case LSock of
            undefined -> ok;
            _ -> gen_tcp:close(LSock)
        end,
    ok.

%% @private
-spec code_change(term(), #state{}, term()) -> {ok, #state{}}.
code_change(_OldVsn, State, _Extra) ->
    {ok, State}.
