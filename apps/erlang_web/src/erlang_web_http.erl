%% @doc Pure HTTP/1.x helpers: what the connection process needs besides the socket.
%%
%% Request lines and headers are parsed by the VM's own HTTP packet parser (erlang:decode_packet/3
%% on the bytes the connection has read, see parse/3); these functions interpret what it returns
%% and build responses.
-module(erlang_web_http).

-export([parse/3]).
-export([head_request/1]).
-export([method/1]).
-export([target_path/1]).
-export([content_length/1]).
-export([tokens/1]).
-export([keep_alive/2]).
-export([response/7]).
-export([reason/1]).
-export([rfc1123_date/1]).
-export([allow/1]).
-export([trim/1]).

-export_type([method/0]).
-export_type([version/0]).
-export_type([connection/0]).

-type method() :: get | head | post | {other, binary()}.
-type version() :: {non_neg_integer(), non_neg_integer()}.
%% What the response says about the connection: nothing (HTTP/1.1 default, persistent),
%% `Connection: keep-alive' (an HTTP/1.0 client asked for it), or `Connection: close'.
-type connection() :: default | keep_alive | close.

%% @doc The request line (Type `http_bin') or header line (`httph_bin') at the start of Buf, as
%% the VM's HTTP packet parser reads it, and the bytes after it. `more': no complete line yet.
%% `too_long': the line, its end included, is or will be longer than MaxLine bytes. The length is
%% checked here rather than by the socket option packet_size, which LING does not apply to
%% accepted sockets (cloudozer/ling core/ol_tcp_acc.c gives them default options only).
-spec parse(http_bin | httph_bin, binary(), pos_integer()) ->
          {ok, term(), binary()} | more | too_long | {error, term()}.
parse(Type, Buf, MaxLine) ->
    case erlang:decode_packet(Type, Buf, []) of
        {ok, _, Rest} when byte_size(Buf) - byte_size(Rest) > MaxLine -> too_long;
        {ok, Packet, Rest} -> {ok, Packet, Rest};
        %% Whatever the rest of the line is, it makes the line longer than MaxLine. (A complete
        %% header line also waits for the next byte, which shows whether it is folded.)
        {more, _} when byte_size(Buf) > MaxLine -> too_long;
        {more, _} -> more;
        {error, Reason} -> {error, Reason}
    end.

%% @doc Whether the bytes of an unparsed request line start a HEAD request (for the error answer
%% to a request line too long to parse: a response to HEAD has no body).
-spec head_request(binary()) -> boolean().
head_request(<<"HEAD ", _/binary>>) -> true;
head_request(_) -> false.

%% @doc The method as the packet parser returns it (atoms for the well-known ones).
-spec method(atom() | binary()) -> method().
method('GET') -> get;
method('HEAD') -> head;
method('POST') -> post;
method(M) when is_atom(M) -> {other, atom_to_binary(M, latin1)};
method(M) when is_binary(M) -> {other, M}.

%% @doc The path of a request target, without its query; `error' for targets this server does
%% not serve (`*', authority form, schemes other than http).
-spec target_path(term()) -> {ok, binary()} | error.
target_path({abs_path, Target}) when is_binary(Target) ->
    path(Target);
target_path({absoluteURI, http, _Host, _Port, Target}) when is_binary(Target) ->
    path(Target);
target_path(_) ->
    error.

path(<<$/, _/binary>> = Target) ->
    case binary:match(Target, <<"?">>) of
        nomatch -> {ok, Target};
        {Pos, 1} -> {ok, binary:part(Target, 0, Pos)}
    end;
path(_) ->
    error.

%% @doc A Content-Length value: one or more digits and nothing else (RFC 7230 3.3.2).
-spec content_length(binary()) -> {ok, non_neg_integer()} | error.
content_length(Value) ->
    case trim(Value) of
        <<>> -> error;
        V ->
            case digits(V) of
                true when byte_size(V) =< 15 -> {ok, binary_to_integer(V)};
                _ -> error
            end
    end.

digits(<<>>) -> true;
digits(<<C, Rest/binary>>) when C >= $0, C =< $9 -> digits(Rest);
digits(_) -> false.

%% @doc The comma-separated tokens of a header value, trimmed and lower-cased
%% (for `Connection', `Transfer-Encoding', `Expect').
-spec tokens(binary()) -> [binary()].
tokens(Value) ->
    Lower = list_to_binary(string:to_lower(binary_to_list(Value))),
    [T || T <- [trim(Part) || Part <- binary:split(Lower, <<",">>, [global])], T =/= <<>>].

%% @doc Whether the connection stays open after this request (RFC 7230 6.3): HTTP/1.1 unless the
%% client said `close'; HTTP/1.0 only when it said `keep-alive'.
-spec keep_alive(version(), [binary()]) -> connection().
keep_alive({1, 0}, Tokens) ->
    case lists:member(<<"keep-alive">>, Tokens) andalso not lists:member(<<"close">>, Tokens) of
        true -> keep_alive;
        false -> close
    end;
keep_alive({1, _}, Tokens) ->
    case lists:member(<<"close">>, Tokens) of
        true -> close;
        false -> default
    end;
keep_alive(_, _) ->
    close.

%% @doc A whole response. With `SendBody' false (HEAD) the body is left out but Content-Length
%% still gives its size.
-spec response(pos_integer(), connection(), [{binary(), iodata()}], binary(), iodata(),
               boolean(), binary()) -> iodata().
response(Status, Conn, Extra, ContentType, Body, SendBody, Date) ->
    Head = [<<"HTTP/1.1 ">>, integer_to_binary(Status), $\s, reason(Status),
            <<"\r\nDate: ">>, Date,
            <<"\r\nContent-Type: ">>, ContentType,
            <<"\r\nContent-Length: ">>, integer_to_binary(iolist_size(Body)),
            connection_header(Conn),
            [[<<"\r\n">>, Name, <<": ">>, Value] || {Name, Value} <- Extra],
            <<"\r\n\r\n">>],
    case SendBody of
        true -> [Head | Body];
        false -> Head
    end.

connection_header(default) -> <<>>;
connection_header(keep_alive) -> <<"\r\nConnection: keep-alive">>;
connection_header(close) -> <<"\r\nConnection: close">>.

%% @doc The reason phrase of the statuses this server sends.
-spec reason(pos_integer()) -> binary().
reason(100) -> <<"Continue">>;
reason(200) -> <<"OK">>;
reason(400) -> <<"Bad Request">>;
reason(404) -> <<"Not Found">>;
reason(405) -> <<"Method Not Allowed">>;
reason(408) -> <<"Request Timeout">>;
reason(413) -> <<"Payload Too Large">>;
reason(414) -> <<"URI Too Long">>;
reason(431) -> <<"Request Header Fields Too Large">>;
reason(500) -> <<"Internal Server Error">>;
reason(503) -> <<"Service Unavailable">>;
reason(505) -> <<"HTTP Version Not Supported">>;
reason(_) -> <<"Unknown">>.

%% @doc The value of an `Allow' header for the methods a resource accepts (HEAD wherever GET).
-spec allow([get | post]) -> binary().
allow(Methods) ->
    Names = lists:append([case M of
                              get -> [<<"GET">>, <<"HEAD">>];
                              post -> [<<"POST">>]
                          end || M <- Methods]),
    join(Names).

join([N]) -> N;
join([N | Rest]) -> <<N/binary, ", ", (join(Rest))/binary>>.

%% @doc An HTTP date (RFC 7231 7.1.1.1, IMF-fixdate) of a UTC date and time.
-spec rfc1123_date(calendar:datetime()) -> binary().
rfc1123_date({{Y, Mo, D} = Date, {H, Mi, S}}) ->
    Day = element(calendar:day_of_the_week(Date),
                  {<<"Mon">>, <<"Tue">>, <<"Wed">>, <<"Thu">>, <<"Fri">>, <<"Sat">>, <<"Sun">>}),
    Month = element(Mo, {<<"Jan">>, <<"Feb">>, <<"Mar">>, <<"Apr">>, <<"May">>, <<"Jun">>,
                         <<"Jul">>, <<"Aug">>, <<"Sep">>, <<"Oct">>, <<"Nov">>, <<"Dec">>}),
    iolist_to_binary([Day, <<", ">>, two(D), $\s, Month, $\s, integer_to_binary(Y), $\s,
                      two(H), $:, two(Mi), $:, two(S), <<" GMT">>]).

two(N) when N < 10 -> [$0, $0 + N];
two(N) -> integer_to_binary(N).

%% @doc Strip spaces and tabs at both ends.
-spec trim(binary()) -> binary().
trim(B) ->
    trim_tail(trim_head(B)).

trim_head(<<C, Rest/binary>>) when C =:= $\s; C =:= $\t -> trim_head(Rest);
trim_head(B) -> B.

trim_tail(<<>>) -> <<>>;
trim_tail(B) ->
    case binary:last(B) of
        C when C =:= $\s; C =:= $\t -> trim_tail(binary:part(B, 0, byte_size(B) - 1));
        _ -> B
    end.
