%% A small HTTP/1.0 responder on gen_tcp: one request per connection. GET / answers the app's
%% settings (its application environment, from [app.config]) as JSON, made by jiffy's NIF.
-module(jiffy_status_listener).
-export([start_link/0, init/1]).

start_link() ->
    proc_lib:start_link(?MODULE, init, [self()]).

init(Parent) ->
    {ok, Port} = application:get_env(jiffy_status, port),
    {ok, Listen} = gen_tcp:listen(Port, [binary, {packet, http_bin}, {active, false}, {reuseaddr, true}]),
    register(jiffy_status_listener, self()),
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
            skip_headers(Socket),
            {Status, Body} = answer(Path),
            gen_tcp:send(Socket, [<<"HTTP/1.0 ">>, integer_to_binary(Status), <<" OK\r\n">>,
                                  <<"Content-Type: application/json\r\nContent-Length: ">>,
                                  integer_to_binary(iolist_size(Body)), <<"\r\n\r\n">>, Body]);
        _ ->
            ok
    end,
    gen_tcp:close(Socket).

skip_headers(Socket) ->
    case gen_tcp:recv(Socket, 0, 5000) of
        {ok, http_eoh} -> ok;
        {ok, _Header} -> skip_headers(Socket);
        _ -> ok
    end.

answer(<<"/healthz">>) ->
    {200, jiffy:encode(#{status => ok})};
answer(<<"/">>) ->
    {ok, Service} = application:get_env(jiffy_status, service),
    {ok, Limits} = application:get_env(jiffy_status, limits),
    {200, jiffy:encode(#{service => Service, limits => maps:from_list(Limits)})};
answer(_) ->
    {404, jiffy:encode(#{error => not_found})}.
