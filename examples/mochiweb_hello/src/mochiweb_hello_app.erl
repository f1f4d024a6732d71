-module(mochiweb_hello_app).
-behaviour(application).
-export([start/2, stop/1]).

start(_Type, _Args) ->
    mochiweb_hello_sup:start_link().

stop(_State) ->
    ok.
