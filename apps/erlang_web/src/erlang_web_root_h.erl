%% @doc GET / : the configured greeting.
-module(erlang_web_root_h).

%% Implements the erlang_web_handler callbacks. (No -behaviour attribute: compiled one file
%% at a time without the output directory on the code path, the compiler could not find it.)

-export([allowed_methods/0]).
-export([handle/2]).

%% @doc GET (and so HEAD).
-spec allowed_methods() -> [get, ...].
allowed_methods() ->
    [get].

%% @doc The greeting, as text.
-spec handle(get, binary()) -> erlang_web_handler:response().
handle(get, _Body) ->
    {200, <<"text/plain; charset=utf-8">>, erlang_web_config:get(greeting)}.
