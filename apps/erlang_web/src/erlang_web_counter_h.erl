%% @doc /counter : GET reads the counter, POST adds one; both answer `{"counter":N}'.
%% 503 `{"error":"storage_unavailable"}' while the storage is not ready (or has failed).
-module(erlang_web_counter_h).

%% Implements the erlang_web_handler callbacks. (No -behaviour attribute: compiled one file
%% at a time without the output directory on the code path, the compiler could not find it.)

-export([allowed_methods/0]).
-export([handle/2]).

%% @doc GET (and so HEAD) and POST.
-spec allowed_methods() -> [get | post, ...].
allowed_methods() ->
    [get, post].

%% @doc Read or increment the counter.
-spec handle(get | post, binary()) -> erlang_web_handler:response().
handle(get, _Body) ->
    reply(erlang_web_storage:value());
handle(post, _Body) ->
    reply(erlang_web_storage:increment()).

reply({ok, N}) ->
    {200, <<"application/json">>, erlang_web_json:encode({[{counter, N}]})};
reply({error, unavailable}) ->
    {503, <<"application/json">>, erlang_web_json:encode({[{error, storage_unavailable}]})}.
