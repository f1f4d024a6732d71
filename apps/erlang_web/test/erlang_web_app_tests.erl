%% Starts the whole application on a free port (RAM storage) and talks HTTP to it over gen_tcp.
-module(erlang_web_app_tests).

-include_lib("eunit/include/eunit.hrl").

app_test_() ->
    {setup, fun start/0, fun stop/1,
     fun(Port) ->
             [{"health, greeting and counter on one keep-alive connection",
               fun() -> keep_alive(Port) end},
              {"pipelined requests are answered in order", fun() -> pipelined(Port) end},
              {"a malformed request line gets 400 and the connection is closed",
               fun() -> bad_request(Port) end},
              {"drain closes idle connections and stops accepting", fun() -> drain(Port) end}]
     end}.

start() ->
    ok = application:load(erlang_web),
    [ok = application:set_env(erlang_web, K, V)
     || {K, V} <- [{port, 0}, {storage, ram}, {acceptors, 2}, {greeting, <<"hi there">>}]],
    {ok, Started} = application:ensure_all_started(erlang_web),
    Port = erlang_web_listener:port(),
    ok = wait_healthy(Port, 50),
    put(started, Started),
    Port.

stop(_Port) ->
    [application:stop(A) || A <- lists:reverse(get(started))],
    application:unload(erlang_web).

wait_healthy(_Port, 0) ->
    {error, never_healthy};
wait_healthy(Port, N) ->
    {ok, S} = connect(Port),
    case request(S, <<"GET /health HTTP/1.1\r\nHost: t\r\n\r\n">>) of
        {200, _, _} ->
            gen_tcp:close(S);
        _ ->
            gen_tcp:close(S),
            receive after 100 -> ok end,
            wait_healthy(Port, N - 1)
    end.

keep_alive(Port) ->
    {ok, S} = connect(Port),
    ?assertMatch({200, _, <<"{\"status\":\"ok\",\"storage\":\"ram\"}">>},
                 request(S, <<"GET /health HTTP/1.1\r\nHost: t\r\n\r\n">>)),
    ?assertMatch({200, _, <<"hi there">>}, request(S, <<"GET / HTTP/1.1\r\nHost: t\r\n\r\n">>)),
    {200, _, C0} = request(S, <<"GET /counter HTTP/1.1\r\nHost: t\r\n\r\n">>),
    <<"{\"counter\":", N0/binary>> = C0,
    N = binary_to_integer(binary:part(N0, 0, byte_size(N0) - 1)),
    Expect = iolist_to_binary(["{\"counter\":", integer_to_list(N + 1), "}"]),
    ?assertMatch({200, _, Expect},
                 request(S, <<"POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n">>)),
    {405, Headers, _} = request(S, <<"DELETE /counter HTTP/1.1\r\nHost: t\r\n\r\n">>),
    ?assertEqual({"allow", "GET, HEAD, POST"}, lists:keyfind("allow", 1, Headers)),
    ?assertMatch({404, _, _}, request(S, <<"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n">>)),
    gen_tcp:close(S).

pipelined(Port) ->
    {ok, S} = connect(Port),
    ok = gen_tcp:send(S, <<"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
                           "POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                           "GET /version HTTP/1.1\r\nHost: t\r\n\r\n">>),
    ?assertMatch({200, _, <<"hi there">>}, response(S)),
    ?assertMatch({200, _, <<"{\"counter\":", _/binary>>}, response(S)),
    ?assertMatch({200, _, <<"{\"app\":\"erlang_web\",\"version\":\"0.1.0\",", _/binary>>},
                 response(S)),
    gen_tcp:close(S).

bad_request(Port) ->
    {ok, S} = connect(Port),
    ?assertMatch({400, _, _}, request(S, <<"NONSENSE\r\n\r\n">>)),
    ?assertEqual({error, closed}, gen_tcp:recv(S, 0, 2000)),
    gen_tcp:close(S).

drain(Port) ->
    {ok, Idle} = connect(Port),
    ?assertMatch({200, _, _}, request(Idle, <<"GET / HTTP/1.1\r\nHost: t\r\n\r\n">>)),
    ok = erlang_web_listener:drain(2000),
    %% the idle keep-alive connection is closed, and nothing listens any more
    ?assertEqual({error, closed}, gen_tcp:recv(Idle, 0, 2000)),
    ?assertEqual({error, econnrefused}, connect(Port)),
    ?assertEqual(0, erlang_web_conns:count()).

connect(Port) ->
    gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}, {packet, http_bin}], 2000).

request(S, Data) ->
    ok = gen_tcp:send(S, Data),
    response(S).

%% Read one response with the VM's HTTP client-side packet parser.
response(S) ->
    ok = inet:setopts(S, [{packet, http_bin}]),
    {ok, {http_response, _, Status, _}} = gen_tcp:recv(S, 0, 2000),
    Headers = headers(S, []),
    Len = list_to_integer(proplists:get_value("content-length", Headers)),
    ok = inet:setopts(S, [{packet, raw}]),
    Body = case Len of
               0 -> <<>>;
               _ -> {ok, B} = gen_tcp:recv(S, Len, 2000), B
           end,
    {Status, Headers, Body}.

headers(S, Acc) ->
    case gen_tcp:recv(S, 0, 2000) of
        {ok, {http_header, _, Name, _, Value}} ->
            Key = string:to_lower(if is_atom(Name) -> atom_to_list(Name);
                                     true -> binary_to_list(Name)
                                  end),
            headers(S, [{Key, binary_to_list(Value)} | Acc]);
        {ok, http_eoh} ->
            lists:reverse(Acc)
    end.
