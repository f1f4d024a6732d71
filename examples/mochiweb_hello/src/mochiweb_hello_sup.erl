-module(mochiweb_hello_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    {ok, Port} = application:get_env(mochiweb_hello, port),
    Web = #{id => mochiweb_hello_web,
            start => {mochiweb_http, start_link,
                      [[{name, mochiweb_hello_web}, {port, Port},
                        {loop, fun mochiweb_hello_web:loop/1}]]}},
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, [Web]}}.
