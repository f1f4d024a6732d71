%% @doc GET /version : which build this is, from the .app and the configuration baked into the
%% image at build time.
-module(erlang_web_version_h).

%% Implements the erlang_web_handler callbacks. (No -behaviour attribute: compiled one file
%% at a time without the output directory on the code path, the compiler could not find it.)

-export([allowed_methods/0]).
-export([handle/2]).

%% @doc GET (and so HEAD).
-spec allowed_methods() -> [get, ...].
allowed_methods() ->
    [get].

%% @doc `{"app":"erlang_web","version":V,"build_id":B,"config_digest":D,"target":T,"env":E}'.
-spec handle(get, binary()) -> erlang_web_handler:response().
handle(get, _Body) ->
    Vsn = case application:get_key(erlang_web, vsn) of
              {ok, V} -> list_to_binary(V);
              undefined -> <<"unknown">>
          end,
    Json = {[{app, <<"erlang_web">>},
             {version, Vsn},
             {build_id, erlang_web_config:get(build_id)},
             {config_digest, erlang_web_config:get(config_digest)},
             {target, erlang_web_config:get(image_target)},
             {env, erlang_web_config:get(env)}]},
    {200, <<"application/json">>, erlang_web_json:encode(Json)}.
