%% The connection's socket mode is one LING implements, checked two ways.
%%
%% LING's TCP outlet (cloudozer/ling at bc97a26, core/ol_tcp.c) answers recv on a socket that is
%% not passive with einval (ol_tcp_control, TCP_REQ_RECV: `if (ol->active != INET_PASSIVE) goto
%% error'), and in the HTTP packet modes keeps delivering header tuples while in {active, once}
%% (recv_bake_packets: only a packet that is not a tuple makes an {active, once} socket passive).
%% OTP 25 does neither, so a connection that works here can fail there. erlang_web_conn therefore
%% reads its socket in one mode whose behaviour the two share: {packet, raw} and {active, once},
%% one delivery per arming, no recv. These tests fail if it ever reads with recv, sets any
%% other active or packet mode, or if the listen socket hands out sockets in another mode.
-module(erlang_web_socket_mode_tests).

-include_lib("eunit/include/eunit.hrl").

%% -- from the source: every socket call erlang_web_conn makes ---------------------------------

source_test_() ->
    Calls = remote_calls(erlang_web_conn),
    [{"erlang_web_conn makes socket calls at all (the check below is not vacuous)",
      ?_assert(lists:keymember({inet, setopts}, 1, Calls))},
     {"erlang_web_conn never calls recv",
      ?_assertEqual([], [C || {{M, F}, _} = C <- Calls,
                              F =:= recv, lists:member(M, [gen_tcp, prim_inet, inet])])},
     {"every inet:setopts in erlang_web_conn arms one active delivery, nothing else",
      ?_assertEqual([], [Opts || {{inet, setopts}, [_Sock, Opts]} <- Calls,
                                 Opts =/= {literal, [{active, once}]}])},
     {"erlang_web_conn uses only send, shutdown and close of gen_tcp",
      ?_assertEqual([], [F || {{gen_tcp, F}, _} <- Calls,
                              not lists:member(F, [send, shutdown, close])])},
     {"erlang_web_conn does not drive the socket below gen_tcp",
      ?_assertEqual([], [C || {{M, _}, _} = C <- Calls, lists:member(M, [prim_inet, erlang_port])]
                        ++ [C || {{erlang, F}, _} = C <- Calls,
                                 lists:member(F, [port_command, port_control])])}].

%% Every Module:Function(Args) call in Mod's abstract code, with each argument as
%% {literal, Term} when it is a constant and `expr' otherwise.
remote_calls(Mod) ->
    {ok, {Mod, [{abstract_code, {raw_abstract_v1, Forms}}]}} =
        beam_lib:chunks(code:which(Mod), [abstract_code]),
    calls(Forms, []).

calls({call, _, {remote, _, {atom, _, M}, {atom, _, F}}, Args} = _Call, Acc) ->
    calls(Args, [{{M, F}, [arg(A) || A <- Args]} | Acc]);
calls(T, Acc) when is_tuple(T) ->
    calls(tuple_to_list(T), Acc);
calls([H | T], Acc) ->
    calls(T, calls(H, Acc));
calls(_, Acc) ->
    Acc.

arg(Expr) ->
    try erl_parse:normalise(Expr) of
        Term -> {literal, Term}
    catch
        _:_ -> expr
    end.

%% -- at run time: every socket call of every connection process --------------------------------

runtime_test_() ->
    {setup, fun start/0, fun stop/1,
     fun({Port, _}) ->
             {timeout, 60, fun() -> traced(Port) end}
     end}.

-define(ENV, [{port, 0}, {storage, ram}, {acceptors, 2}, {max_connections, 2},
              {request_timeout, 1000}, {idle_timeout, 1000}, {max_line, 256}]).

start() ->
    %% (other test modules may have loaded it already)
    _ = application:load(erlang_web),
    %% max_connections 2: the third connection takes the over-the-limit path
    [ok = application:set_env(erlang_web, K, V) || {K, V} <- ?ENV],
    {ok, Started} = application:ensure_all_started(erlang_web),
    {erlang_web_listener:port(), Started}.

stop({_, Started}) ->
    [application:stop(A) || A <- lists:reverse(Started)],
    [application:unset_env(erlang_web, K) || {K, _} <- ?ENV],
    application:unload(erlang_web).

traced(Port) ->
    %% The listen socket hands out binary, raw, passive sockets.
    {ok, LOpts} = inet:getopts(erlang_web_listener:socket(), [packet, active, mode]),
    ?assertEqual([{active, false}, {mode, binary}, {packet, 0}], lists:sort(LOpts)),
    Trace = trace(fun() -> exercise(Port) end),
    Conns = [Pid || {Pid, {erlang_web_conn, init, _}} <- Trace],
    ?assert(length(Conns) >= 8),
    Mine = [{Pid, MFA} || {Pid, MFA} <- Trace, lists:member(Pid, Conns)],
    Recvs = [X || {_, {M, recv, _}} = X <- Mine, M =:= gen_tcp orelse M =:= prim_inet],
    ?assertEqual([], Recvs),
    Setopts = [Opts || {_, {inet, setopts, [_, Opts]}} <- Mine],
    ?assert(length(Setopts) >= length(Conns)),
    ?assertEqual([], [O || O <- Setopts, O =/= [{active, once}]]).

%% Run Fun with call tracing of connection starts and socket calls; the calls seen, in order.
trace(Fun) ->
    Self = self(),
    Tracer = spawn_link(fun() -> collect(Self, []) end),
    Patterns = [{erlang_web_conn, init, 2}, {gen_tcp, recv, '_'}, {prim_inet, recv, '_'},
                {inet, setopts, 2}],
    [_ = erlang:trace_pattern(P, true, [local]) || P <- Patterns],
    _ = erlang:trace(all, true, [call, {tracer, Tracer}]),
    try
        Fun()
    after
        _ = erlang:trace(all, false, [call]),
        [_ = erlang:trace_pattern(P, false, [local]) || P <- Patterns]
    end,
    Tracer ! {done, Self},
    receive {trace_result, Calls} -> Calls end.

collect(Parent, Acc) ->
    receive
        {trace, Pid, call, MFA} -> collect(Parent, [{Pid, MFA} | Acc]);
        {done, Parent} -> Parent ! {trace_result, lists:reverse(Acc)}
    end.

%% Requests that take every path of the connection code: keep-alive, pipelining, a body split
%% over segments with Expect: 100-continue, HEAD, errors (400, 414, 431), a request that times
%% out (408), an idle close, and a connection over max_connections.
exercise(Port) ->
    {ok, A} = connect(Port),
    ok = gen_tcp:send(A, <<"GET / HTTP/1.1\r\nHost: t\r\n\r\nHEAD /version HTTP/1.1\r\nHost: t\r\n\r\n">>),
    {200, _} = response(A),
    {200, <<>>} = response(A, head),
    ok = gen_tcp:send(A, <<"POST /counter HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                           "Content-Length: 5\r\n\r\n">>),
    {ok, <<"HTTP/1.1 100 Continue\r\n\r\n">>} = gen_tcp:recv(A, 25, 2000),
    ok = gen_tcp:send(A, <<"ab">>),
    ok = gen_tcp:send(A, <<"c">>),
    ok = gen_tcp:send(A, <<"de">>),
    {200, _} = response(A),
    %% A second, held connection: with A, max_connections is reached.
    {ok, B} = connect(Port),
    ok = gen_tcp:send(B, <<"GET /health HTTP/1.1\r\nHost: t\r\n\r\n">>),
    {200, _} = response(B),
    {ok, Over} = connect(Port),
    ok = gen_tcp:send(Over, <<"GET / HTTP/1.1\r\nHost: t\r\n\r\n">>),
    {503, _} = response(Over),
    {ok, OverHealth} = connect(Port),
    ok = gen_tcp:send(OverHealth, <<"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n">>),
    {200, <<>>} = response(OverHealth, head),
    %% nothing follows the head of the answer to HEAD: the server closes
    ?assertEqual({error, closed}, gen_tcp:recv(OverHealth, 0, 3000)),
    [gen_tcp:close(S) || S <- [A, B, Over, OverHealth]],
    wait_until_free(Port, 50),
    Errors = [{400, <<"NONSENSE\r\n\r\n">>},
              {414, <<"GET /", (binary:copy(<<"a">>, 300))/binary, " HTTP/1.1\r\n\r\n">>},
              {431, <<"GET / HTTP/1.1\r\nHost: t\r\nX: ", (binary:copy(<<"b">>, 300))/binary,
                      "\r\n\r\n">>},
              {408, <<"GET / HTTP/1.1\r\nHost: t\r\n">>}],
    [begin
         {ok, S} = connect(Port),
         ok = gen_tcp:send(S, Bytes),
         ?assertMatch({Status, _}, response(S)),
         ?assertEqual({error, closed}, gen_tcp:recv(S, 0, 3000)),
         gen_tcp:close(S)
     end || {Status, Bytes} <- Errors],
    %% idle keep-alive connection closed by the server after idle_timeout
    {ok, Idle} = connect(Port),
    ok = gen_tcp:send(Idle, <<"GET / HTTP/1.1\r\nHost: t\r\n\r\n">>),
    {200, _} = response(Idle),
    ?assertEqual({error, closed}, gen_tcp:recv(Idle, 0, 5000)),
    ok.

%% Until both connection slots are free again (the closed connections have been noticed).
wait_until_free(_Port, 0) ->
    erlang:error(connections_not_freed);
wait_until_free(Port, N) ->
    case erlang_web_conns:count() of
        0 -> ok;
        _ -> receive after 50 -> wait_until_free(Port, N - 1) end
    end.

connect(Port) ->
    gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 2000).

%% One response: status and body (by Content-Length; none for an answer to HEAD).
response(S) ->
    response(S, get).

response(S, Method) ->
    {ok, Head} = read_head(S, <<>>),
    [StatusLine | Lines] = binary:split(Head, <<"\r\n">>, [global]),
    <<"HTTP/1.1 ", Code:3/binary, _/binary>> = StatusLine,
    Body = case content_length(Lines) of
               _ when Method =:= head -> <<>>;
               0 -> <<>>;
               Len -> {ok, B} = gen_tcp:recv(S, Len, 2000), B
           end,
    {binary_to_integer(Code), Body}.

read_head(S, Acc) ->
    case binary:match(Acc, <<"\r\n\r\n">>) of
        {Pos, 4} -> {ok, binary:part(Acc, 0, Pos)};
        nomatch ->
            {ok, Byte} = gen_tcp:recv(S, 1, 2000),
            read_head(S, <<Acc/binary, Byte/binary>>)
    end.

content_length([]) -> 0;
content_length([<<"Content-Length: ", N/binary>> | _]) -> binary_to_integer(N);
content_length([_ | T]) -> content_length(T).
