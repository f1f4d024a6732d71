%% The visit counter: an application with one registered process.
-module(shop_store).
-behaviour(application).
-export([start/2, stop/1, visit/0, init/1]).

start(_Type, _Args) ->
    {ok, First} = application:get_env(shop_store, first_visit),
    proc_lib:start_link(?MODULE, init, [{self(), First}]).

stop(_State) ->
    ok.

visit() ->
    shop_store ! {visit, self()},
    receive {visits, N} -> N after 1000 -> error(timeout) end.

init({Parent, First}) ->
    register(shop_store, self()),
    proc_lib:init_ack(Parent, {ok, self()}),
    loop(First).

loop(N) ->
    receive
        {visit, From} -> From ! {visits, N}, loop(N + 1)
    end.
