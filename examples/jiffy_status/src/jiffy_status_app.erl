-module(jiffy_status_app).
-behaviour(application).
-behaviour(supervisor).
-export([start/2, stop/1, init/1]).

start(_Type, _Args) ->
    supervisor:start_link({local, jiffy_status_sup}, ?MODULE, []).

stop(_State) ->
    ok.

init([]) ->
    Listener = #{id => jiffy_status_listener, start => {jiffy_status_listener, start_link, []}},
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, [Listener]}}.
