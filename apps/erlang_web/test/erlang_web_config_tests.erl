-module(erlang_web_config_tests).

-include_lib("eunit/include/eunit.hrl").

-define(KEYS, [port, greeting, acceptors, max_connections, request_timeout, idle_timeout,
               send_timeout, max_body, max_line, log_interval, scratch_dir, storage, build_id,
               config_digest, image_target, env]).

with_env(Pairs, Fun) ->
    _ = application:load(erlang_web),
    Old = [{K, application:get_env(erlang_web, K)} || K <- ?KEYS],
    [application:unset_env(erlang_web, K) || K <- ?KEYS],
    [application:set_env(erlang_web, K, V) || {K, V} <- Pairs],
    try
        Fun()
    after
        [case V of
             {ok, X} -> application:set_env(erlang_web, K, X);
             undefined -> application:unset_env(erlang_web, K)
         end || {K, V} <- Old]
    end.

defaults_cover_every_key_test() ->
    ?assertEqual(lists:sort(?KEYS), lists:sort([K || {K, _} <- erlang_web_config:defaults()])).

defaults_test() ->
    with_env([], fun() ->
        ?assertEqual(ok, erlang_web_config:validate()),
        ?assertEqual(8080, erlang_web_config:get(port)),
        ?assertEqual(8, erlang_web_config:get(acceptors)),
        ?assertEqual(1024, erlang_web_config:get(max_connections)),
        ?assertEqual(5000, erlang_web_config:get(request_timeout)),
        %% longer than an AWS ALB's default idle timeout of 60 s
        ?assertEqual(75000, erlang_web_config:get(idle_timeout)),
        ?assertEqual(10000, erlang_web_config:get(send_timeout)),
        ?assertEqual(65536, erlang_web_config:get(max_body)),
        %% RFC 9112 3: a server should support request lines of at least 8000 octets
        ?assertEqual(8192, erlang_web_config:get(max_line)),
        ?assertEqual(10000, erlang_web_config:get(log_interval)),
        ?assertEqual("/scratch", erlang_web_config:get(scratch_dir)),
        ?assertEqual(auto, erlang_web_config:get(storage)),
        ?assertEqual(<<"unknown">>, erlang_web_config:get(build_id)),
        ?assertEqual(<<"unknown">>, erlang_web_config:get(image_target)),
        ?assert(is_binary(erlang_web_config:get(greeting)))
    end).

env_overrides_default_test() ->
    with_env([{port, 9000}, {greeting, "h\x{e9}llo"}, {scratch_dir, <<"/data">>},
              {storage, disc}, {env, <<"prod">>}],
             fun() ->
                 ?assertEqual(ok, erlang_web_config:validate()),
                 ?assertEqual(9000, erlang_web_config:get(port)),
                 %% strings become UTF-8 binaries, binary paths become strings
                 ?assertEqual(<<"h", 195, 169, "llo">>, erlang_web_config:get(greeting)),
                 ?assertEqual("/data", erlang_web_config:get(scratch_dir)),
                 ?assertEqual(disc, erlang_web_config:get(storage)),
                 ?assertEqual(<<"prod">>, erlang_web_config:get(env))
             end).

bad_values_test_() ->
    Bad = [{port, 70000}, {port, "8080"}, {acceptors, 0}, {max_connections, -1},
           {request_timeout, infinity}, {idle_timeout, 1.5}, {max_body, -1},
           {send_timeout, 0}, {max_line, 63}, {max_line, "8k"}, {log_interval, -5},
           {scratch_dir, ""}, {scratch_dir, 42}, {storage, tmpfs}, {greeting, <<255, 254>>},
           {build_id, 7}],
    [{lists:flatten(io_lib:format("~p = ~p", [K, V])),
      fun() ->
              with_env([{K, V}], fun() ->
                  ?assertMatch({error, {bad_config, K, V, _}}, erlang_web_config:validate()),
                  ?assertError({bad_config, K, V, _}, erlang_web_config:get(K))
              end)
      end} || {K, V} <- Bad].
