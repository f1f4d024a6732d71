-module(erlang_web_http_tests).

-include_lib("eunit/include/eunit.hrl").

method_test_() ->
    [?_assertEqual(get, erlang_web_http:method('GET')),
     ?_assertEqual(head, erlang_web_http:method('HEAD')),
     ?_assertEqual(post, erlang_web_http:method('POST')),
     ?_assertEqual({other, <<"DELETE">>}, erlang_web_http:method('DELETE')),
     %% methods are case-sensitive: the parser returns unknown spellings as binaries
     ?_assertEqual({other, <<"get">>}, erlang_web_http:method(<<"get">>))].

target_path_test_() ->
    [?_assertEqual({ok, <<"/">>}, erlang_web_http:target_path({abs_path, <<"/">>})),
     ?_assertEqual({ok, <<"/health">>}, erlang_web_http:target_path({abs_path, <<"/health?x=1&y">>})),
     ?_assertEqual({ok, <<"/counter">>},
                   erlang_web_http:target_path({absoluteURI, http, <<"h">>, 80, <<"/counter">>})),
     ?_assertEqual(error, erlang_web_http:target_path('*')),
     ?_assertEqual(error, erlang_web_http:target_path({abs_path, <<"health">>})),
     ?_assertEqual(error, erlang_web_http:target_path({scheme, <<"h">>, <<"80">>})),
     ?_assertEqual(error, erlang_web_http:target_path(<<"/raw">>))].

content_length_test_() ->
    [?_assertEqual({ok, 0}, erlang_web_http:content_length(<<"0">>)),
     ?_assertEqual({ok, 42}, erlang_web_http:content_length(<<" 42 ">>)),
     ?_assertEqual(error, erlang_web_http:content_length(<<>>)),
     ?_assertEqual(error, erlang_web_http:content_length(<<"-1">>)),
     ?_assertEqual(error, erlang_web_http:content_length(<<"+1">>)),
     ?_assertEqual(error, erlang_web_http:content_length(<<"1 2">>)),
     ?_assertEqual(error, erlang_web_http:content_length(<<"12, 12">>)),
     ?_assertEqual(error, erlang_web_http:content_length(<<"0x10">>)),
     ?_assertEqual(error, erlang_web_http:content_length(<<"9999999999999999">>))].

tokens_test_() ->
    [?_assertEqual([<<"keep-alive">>], erlang_web_http:tokens(<<"Keep-Alive">>)),
     ?_assertEqual([<<"close">>, <<"te">>], erlang_web_http:tokens(<<" close ,, TE ">>)),
     ?_assertEqual([], erlang_web_http:tokens(<<"">>))].

keep_alive_test_() ->
    [?_assertEqual(default, erlang_web_http:keep_alive({1, 1}, [])),
     ?_assertEqual(close, erlang_web_http:keep_alive({1, 1}, [<<"close">>])),
     ?_assertEqual(close, erlang_web_http:keep_alive({1, 0}, [])),
     ?_assertEqual(keep_alive, erlang_web_http:keep_alive({1, 0}, [<<"keep-alive">>])),
     ?_assertEqual(close, erlang_web_http:keep_alive({1, 0}, [<<"keep-alive">>, <<"close">>])),
     ?_assertEqual(close, erlang_web_http:keep_alive({0, 9}, []))].

response_test_() ->
    Date = <<"Sun, 06 Nov 1994 08:49:37 GMT">>,
    Get = iolist_to_binary(erlang_web_http:response(200, default, [], <<"text/plain">>,
                                                    [<<"he">>, "llo"], true, Date)),
    Head = iolist_to_binary(erlang_web_http:response(200, default, [], <<"text/plain">>,
                                                     <<"hello">>, false, Date)),
    Closed = iolist_to_binary(erlang_web_http:response(405, close, [{<<"Allow">>, <<"GET">>}],
                                                       <<"text/plain">>, <<>>, true, Date)),
    KeepAlive = iolist_to_binary(erlang_web_http:response(200, keep_alive, [], <<"a">>, <<>>,
                                                          true, Date)),
    [?_assertEqual(<<"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                     "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello">>, Get),
     %% HEAD: same head, Content-Length of the body that is not sent
     ?_assertEqual(binary:part(Get, 0, byte_size(Get) - 5), Head),
     ?_assertEqual(<<"HTTP/1.1 405 Method Not Allowed\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                     "Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n"
                     "Allow: GET\r\n\r\n">>, Closed),
     ?_assertNotEqual(nomatch, binary:match(KeepAlive, <<"\r\nConnection: keep-alive\r\n\r\n">>))].

rfc1123_date_test_() ->
    [?_assertEqual(<<"Sun, 06 Nov 1994 08:49:37 GMT">>,
                   erlang_web_http:rfc1123_date({{1994, 11, 6}, {8, 49, 37}})),
     ?_assertEqual(<<"Mon, 29 Feb 2016 00:00:09 GMT">>,
                   erlang_web_http:rfc1123_date({{2016, 2, 29}, {0, 0, 9}}))].

allow_test_() ->
    [?_assertEqual(<<"GET, HEAD">>, erlang_web_http:allow([get])),
     ?_assertEqual(<<"GET, HEAD, POST">>, erlang_web_http:allow([get, post])),
     ?_assertEqual(<<"POST">>, erlang_web_http:allow([post]))].

trim_test_() ->
    [?_assertEqual(<<"a b">>, erlang_web_http:trim(<<" \ta b\t ">>)),
     ?_assertEqual(<<>>, erlang_web_http:trim(<<"   ">>)),
     ?_assertEqual(<<>>, erlang_web_http:trim(<<>>))].

reason_test_() ->
    [?_assertEqual(<<"Payload Too Large">>, erlang_web_http:reason(413)),
     ?_assertEqual(<<"URI Too Long">>, erlang_web_http:reason(414)),
     ?_assertEqual(<<"Request Header Fields Too Large">>, erlang_web_http:reason(431)),
     ?_assertEqual(<<"Service Unavailable">>, erlang_web_http:reason(503))].

parse_test_() ->
    P = fun(Type, Bin) -> erlang_web_http:parse(Type, Bin, 32) end,
    Line = fun(N) -> <<"GET /", (binary:copy(<<"a">>, N - 16))/binary, " HTTP/1.1\r\n">> end,
    [?_assertEqual({ok, {http_request, 'GET', {abs_path, <<"/">>}, {1, 1}}, <<"rest">>},
                   P(http_bin, <<"GET / HTTP/1.1\r\nrest">>)),
     ?_assertEqual(more, P(http_bin, <<"GET / HTT">>)),
     ?_assertEqual(more, P(http_bin, <<>>)),
     %% the limit counts the line end: 32 bytes in all is fine, 33 is too long
     ?_assertEqual(32, byte_size(Line(32))),
     ?_assertMatch({ok, {http_request, 'GET', _, {1, 1}}, <<>>}, P(http_bin, Line(32))),
     ?_assertEqual(too_long, P(http_bin, Line(33))),
     %% too long before the line is complete: no need to wait for the rest
     ?_assertEqual(too_long, P(http_bin, binary:copy(<<"a">>, 33))),
     ?_assertEqual(more, P(http_bin, binary:copy(<<"a">>, 32))),
     %% a header line of exactly 32 bytes waiting for the byte that shows it is not folded
     ?_assertEqual(more, P(httph_bin, <<"X: ", (binary:copy(<<"b">>, 27))/binary, "\r\n">>)),
     ?_assertMatch({ok, {http_error, _}, _}, P(http_bin, <<"NONSENSE\r\n\r\n">>)),
     ?_assertEqual({ok, {http_error, <<"\r\n">>}, <<"GET">>}, P(http_bin, <<"\r\nGET">>)),
     %% a header line is complete once the next byte shows it is not folded
     ?_assertEqual(more, P(httph_bin, <<"Host: t\r\n">>)),
     ?_assertEqual({ok, {http_header, 14, 'Host', <<"Host">>, <<"t">>}, <<"\r\n">>},
                   P(httph_bin, <<"Host: t\r\n\r\n">>)),
     ?_assertEqual({ok, http_eoh, <<"body">>}, P(httph_bin, <<"\r\nbody">>)),
     ?_assertEqual(too_long,
                   P(httph_bin, <<"X: ", (binary:copy(<<"b">>, 40))/binary, "\r\n\r\n">>)),
     ?_assertEqual(too_long, P(httph_bin, <<"X: ", (binary:copy(<<"b">>, 29))/binary, "\r\n">>))].

head_request_test_() ->
    [?_assert(erlang_web_http:head_request(<<"HEAD /x">>)),
     ?_assertNot(erlang_web_http:head_request(<<"GET /x">>)),
     ?_assertNot(erlang_web_http:head_request(<<"HEADER">>))].
