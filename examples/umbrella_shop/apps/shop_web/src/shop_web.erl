%% HTTP/1.0 on gen_tcp, one request per connection: GET / greets with the message of the day (a file
%% the release ships next to it, read relative to the release's root) and counts the visit.
-module(shop_web).
-behaviour(application).
-export([start/2, stop/1, init/1]).

start(_Type, _Args) ->
    proc_lib:start_link(?MODULE, init, [self()]).

stop(_State) ->
    ok.

init(Parent) ->
    {ok, Port} = application:get_env(shop_web, port),
    {ok, Listen} = gen_tcp:listen(Port, [binary, {packet, http_bin}, {active, false}, {reuseaddr, true}]),
    register(shop_web, self()),
    proc_lib:init_ack(Parent, {ok, self()}),
    accept(Listen).

accept(Listen) ->
    {ok, Socket} = gen_tcp:accept(Listen),
    Pid = spawn(fun() -> receive go -> serve(Socket) end end),
    ok = gen_tcp:controlling_process(Socket, Pid),
    Pid ! go,
    accept(Listen).

serve(Socket) ->
    case gen_tcp:recv(Socket, 0, 5000) of
        {ok, {http_request, 'GET', {abs_path, Path}, _}} ->
            headers(Socket),
            {Status, Body} = answer(Path),
            gen_tcp:send(Socket, [<<"HTTP/1.0 ">>, integer_to_binary(Status), <<" OK\r\n">>,
                                  <<"Content-Type: text/plain\r\nContent-Length: ">>,
                                  integer_to_binary(iolist_size(Body)), <<"\r\n\r\n">>, Body]);
        _ ->
            ok
    end,
    gen_tcp:close(Socket).

headers(Socket) ->
    case gen_tcp:recv(Socket, 0, 5000) of
        {ok, http_eoh} -> ok;
        {ok, _} -> headers(Socket);
        _ -> ok
    end.

answer(<<"/ready">>) ->
    case whereis(shop_store) of
        undefined -> {503, <<"starting">>};
        _ -> {200, <<"ready">>}
    end;
answer(<<"/">>) ->
    {ok, Motd} = file:read_file("etc/motd.txt"),
    Visits = shop_store:visit(),
    {200, [greeter:greet(Motd), <<", visit ">>, integer_to_binary(Visits), <<"\n">>]};
answer(_) ->
    {404, <<"not found">>}.
