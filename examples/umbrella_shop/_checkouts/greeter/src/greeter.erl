-module(greeter).
-export([greet/1]).

greet(Text) ->
    <<"*** ", (string:trim(Text))/binary, " ***">>.
