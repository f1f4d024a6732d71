-module(erlang_web_json_tests).

-include_lib("eunit/include/eunit.hrl").

enc(T) -> iolist_to_binary(erlang_web_json:encode(T)).

scalars_test_() ->
    [?_assertEqual(<<"true">>, enc(true)),
     ?_assertEqual(<<"false">>, enc(false)),
     ?_assertEqual(<<"null">>, enc(null)),
     ?_assertEqual(<<"\"disc\"">>, enc(disc)),
     ?_assertEqual(<<"-12">>, enc(-12)),
     ?_assertEqual(<<"1.5">>, enc(1.5)),
     ?_assertEqual(<<"\"\"">>, enc(<<>>))].

strings_test_() ->
    [?_assertEqual(<<"\"a\\\"b\\\\c\"">>, enc(<<"a\"b\\c">>)),
     ?_assertEqual(<<"\"l1\\nl2\\r\\t\\b\\f\"">>, enc(<<"l1\nl2\r\t\b\f">>)),
     ?_assertEqual(<<"\"\\u0000\\u001f\"">>, enc(<<0, 31>>)),
     %% UTF-8 passes through unescaped
     ?_assertEqual(<<"\"h", 195, 169, "\"">>, enc(<<"h", 195, 169>>)),
     ?_assertEqual(<<"\"x/y\"">>, enc(<<"x/y">>))].

structures_test_() ->
    [?_assertEqual(<<"{}">>, enc({[]})),
     ?_assertEqual(<<"[]">>, enc([])),
     ?_assertEqual(<<"[1,\"a\",[true]]">>, enc([1, <<"a">>, [true]])),
     ?_assertEqual(<<"{\"status\":\"ok\",\"n\":{\"k\":[]}}">>,
                   enc({[{status, ok}, {<<"n">>, {[{k, []}]}}]})),
     %% keys are escaped like strings
     ?_assertEqual(<<"{\"a\\\"\":1}">>, enc({[{<<"a\"">>, 1}]}))].
