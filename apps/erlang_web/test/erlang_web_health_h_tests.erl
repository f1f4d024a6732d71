-module(erlang_web_health_h_tests).

-include_lib("eunit/include/eunit.hrl").

json({S, J}) -> {S, iolist_to_binary(erlang_web_json:encode(J))}.

health_test_() ->
    [?_assertEqual({200, <<"{\"status\":\"ok\",\"storage\":\"disc\"}">>},
                   json(erlang_web_health_h:health(up, {ready, disc}))),
     ?_assertEqual({200, <<"{\"status\":\"ok\",\"storage\":\"ram\"}">>},
                   json(erlang_web_health_h:health(up, {ready, ram}))),
     ?_assertEqual({503, <<"{\"status\":\"starting\",\"listener\":\"up\",\"storage\":\"starting\"}">>},
                   json(erlang_web_health_h:health(up, starting))),
     ?_assertEqual({503, <<"{\"status\":\"starting\",\"listener\":\"starting\",\"storage\":\"ram\"}">>},
                   json(erlang_web_health_h:health(starting, {ready, ram}))),
     ?_assertEqual({503, <<"{\"status\":\"storage_failed\",\"listener\":\"up\",\"storage\":\"failed\","
                          "\"reason\":\"no disc\"}">>},
                   json(erlang_web_health_h:health(up, {failed, <<"no disc">>}))),
     ?_assertEqual({503, <<"{\"status\":\"draining\",\"listener\":\"draining\",\"storage\":\"disc\"}">>},
                   json(erlang_web_health_h:health(draining, {ready, disc})))].
