%% @doc Which handler serves which path.
-module(erlang_web_router).

-export([route/1]).
-export([routes/0]).

%% @doc Every path and its handler.
-spec routes() -> [{binary(), module()}].
routes() ->
    [{<<"/">>, erlang_web_root_h},
     {<<"/health">>, erlang_web_health_h},
     {<<"/version">>, erlang_web_version_h},
     {<<"/counter">>, erlang_web_counter_h}].

%% @doc The handler of a path (exact match; the query is already removed).
-spec route(binary()) -> {ok, module()} | not_found.
route(Path) ->
    case lists:keyfind(Path, 1, routes()) of
        {Path, Handler} -> {ok, Handler};
        false -> not_found
    end.
