-module(erlang_web_router_tests).

-include_lib("eunit/include/eunit.hrl").

route_test_() ->
    [?_assertEqual({ok, erlang_web_root_h}, erlang_web_router:route(<<"/">>)),
     ?_assertEqual({ok, erlang_web_health_h}, erlang_web_router:route(<<"/health">>)),
     ?_assertEqual({ok, erlang_web_version_h}, erlang_web_router:route(<<"/version">>)),
     ?_assertEqual({ok, erlang_web_counter_h}, erlang_web_router:route(<<"/counter">>)),
     ?_assertEqual(not_found, erlang_web_router:route(<<"/health/">>)),
     ?_assertEqual(not_found, erlang_web_router:route(<<"/Health">>)),
     ?_assertEqual(not_found, erlang_web_router:route(<<"/nope">>))].

%% Every routed handler exports the handler callbacks and accepts GET.
handlers_test_() ->
    [{atom_to_list(H),
      fun() ->
              {module, H} = code:ensure_loaded(H),
              ?assert(erlang:function_exported(H, handle, 2)),
              ?assert(lists:member(get, H:allowed_methods()))
      end} || {_, H} <- erlang_web_router:routes()].

allowed_methods_test_() ->
    [?_assertEqual([get], erlang_web_root_h:allowed_methods()),
     ?_assertEqual([get, post], erlang_web_counter_h:allowed_methods())].
