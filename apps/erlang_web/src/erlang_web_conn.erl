%% @doc One HTTP/1.x connection: reads requests, calls handlers, writes responses.
%%
%% Started (linked) by erlang_web_conns, which counts connections; the acceptor then makes this
%% process the socket's controlling process and sends it the socket.
%%
%% Socket mode: the socket stays in `{packet, raw}' for the life of the connection and is read
%% only with `{active, once}': each wait for bytes arms one delivery and receives one
%% `{tcp, Sock, Data}' message. It is never read with gen_tcp:recv/2,3 and never switched to an
%% HTTP packet mode. LING's TCP outlet (cloudozer/ling core/ol_tcp.c) implements this mode as OTP
%% does: after one delivery of a packet that is not a tuple, an `{active, once}' socket is passive
%% again (recv_bake_packets). Its HTTP packet modes differ from OTP's: it keeps delivering header
%% tuples while in `{active, once}', and answers recv on a socket that is not passive with einval
%% (the TCP_REQ_RECV branch of ol_tcp_control). The request line and headers are parsed here, from
%% the bytes read, by the VM's own HTTP parser (erlang_web_http:parse/3, erlang:decode_packet/3),
%% which also lets pipelined requests and bodies share one buffer. One gap remains on LING: a
%% peer's close that arrives while the socket is passive (between two deliveries, i.e. while a
%% request is being answered) is kept for a later recv only (peer_close_detected), not delivered
%% when {active, once} is armed again; such a connection ends at its idle_timeout (or, after an
%% answer with `Connection: close', at the end of the linger) instead of at once.
%%
%% Limits the app keeps itself, as LING gives accepted sockets default options (core/ol_tcp_acc.c,
%% core/ol_inet.c: packet_size, send_timeout and send_timeout_close are not inherited):
%% - max_line: a request line longer than this gets 414, a header line 431 (RFC 9112 3, 5;
%%   RFC 6585 5); more than 100 header fields get 431.
%% - send_timeout: a response the client does not take within it closes the connection (a timer
%%   asks erlang_web_conns to end this process while it is blocked in the send).
%%
%% Timeouts:
%% - request_timeout: a whole request (line, headers, body) must arrive within it. The clock
%%   starts at accept for the first request on a connection, and when the request line has
%%   arrived for later ones. A request that times out after its request line gets 408; one that
%%   has not completed its request line is closed without a response.
%% - idle_timeout: how long a keep-alive connection may wait for its next request line; then it
%%   is closed without a response.
%% A malformed request gets 400 (413, 414, 431 for what is too large) and the connection is
%% closed, because after a framing error the rest of the stream cannot be trusted.
%%
%% Over max_connections (mode reject) the connection is answered at once and closed: a request
%% for the health check's path gets the real health answer, so that a busy instance is not taken
%% for a failed one; anything else gets 503.
-module(erlang_web_conn).

-export([start_link/2]).
-export([init/2]).
-export([drain/1]).
-export([opts/0]).

-export_type([mode/0]).
-export_type([opts/0]).

-record(opts, {request_timeout :: pos_integer(),
               idle_timeout :: pos_integer(),
               send_timeout :: pos_integer(),
               max_body :: non_neg_integer(),
               max_line :: pos_integer()}).

-opaque opts() :: #opts{}.
%% serve: a normal connection; reject: over max_connections, answered at once and closed.
-type mode() :: serve | reject.

-record(st, {sock :: inet:socket(),
             opts :: #opts{},
             %% bytes read and not yet parsed (the rest of a segment, pipelined requests)
             buf = <<>> :: binary(),
             draining = false :: boolean()}).

-record(req, {method :: erlang_web_http:method(),
              target :: term(),
              version :: erlang_web_http:version(),
              deadline :: integer(),
              headers = 0 :: non_neg_integer(),
              host = 0 :: non_neg_integer(),
              length :: undefined | non_neg_integer(),
              chunked = false :: boolean(),
              expect = false :: boolean(),
              conn = [] :: [binary()]}).

-ifdef(OTP_RELEASE).
-define(EXCEPTION(Class, Reason, Stack), Class:Reason:Stack).
-define(STACKTRACE(Stack), Stack).
-else.
%% Before OTP 21 the stack trace of the exception being handled comes from get_stacktrace/0.
-define(EXCEPTION(Class, Reason, _Stack), Class:Reason).
-define(STACKTRACE(_Stack), erlang:get_stacktrace()).
-endif.

-define(MAX_HEADERS, 100).
%% After the response of a connection we close, how long (ms) and how much (bytes) we keep
%% reading and discarding what the client still sends, so that closing with unread data does not
%% reset the connection before the client has read the response.
-define(LINGER_MS, 1000).
-define(LINGER_BYTES, 1048576).
%% How long to wait for the socket from the acceptor before giving up.
-define(HANDOFF_MS, 5000).
%% Over max_connections, how long to wait for a request line before answering 503 anyway. A
%% client's request line arrives right behind its handshake, so this only delays the 503 of a
%% client that sends nothing.
-define(REJECT_WAIT_MS, 500).
-define(TEXT, <<"text/plain; charset=utf-8">>).

%% @doc The connection options, read once from the configuration (by erlang_web_conns).
-spec opts() -> opts().
opts() ->
    #opts{request_timeout = erlang_web_config:get(request_timeout),
          idle_timeout = erlang_web_config:get(idle_timeout),
          send_timeout = erlang_web_config:get(send_timeout),
          max_body = erlang_web_config:get(max_body),
          max_line = erlang_web_config:get(max_line)}.

%% @doc Start a connection process linked to the caller; it waits for its socket.
%%
%% One answered over the limit runs at high priority, as the acceptors do: its work is small and
%% bounded (read one line, send one short answer), and it is what the load balancer's health
%% check waits for when the instance is full; at normal priority it would wait behind every busy
%% connection.
-spec start_link(mode(), opts()) -> {ok, pid()}.
start_link(serve, Opts) ->
    {ok, proc_lib:spawn_link(?MODULE, init, [serve, Opts])};
start_link(reject, Opts) ->
    {ok, proc_lib:spawn_opt(?MODULE, init, [reject, Opts], [link, {priority, high}])}.

%% @doc Ask a connection to close once it has no request in progress.
-spec drain(pid()) -> ok.
drain(Pid) ->
    Pid ! {?MODULE, drain},
    ok.

%% @private Process entry point.
-spec init(mode(), opts()) -> ok.
init(Mode, Opts) ->
    receive
        {erlang_web_acceptor, socket, Sock} ->
            run(Mode, #st{sock = Sock, opts = Opts})
    after ?HANDOFF_MS ->
        ok
    end.

run(reject, #st{opts = #opts{request_timeout = RT}} = St) ->
    reject(St, now_ms() + erlang:min(RT, ?REJECT_WAIT_MS));
run(serve, #st{opts = #opts{request_timeout = RT}} = St) ->
    Accepted = now_ms(),
    request_line(St, Accepted + RT, Accepted).

%% -- over max_connections -------------------------------------------------------------------

reject(#st{buf = Buf, opts = #opts{max_line = Max}} = St, Deadline) ->
    case erlang_web_http:parse(http_bin, Buf, Max) of
        {ok, {http_error, Line}, Rest} when Line =:= <<"\r\n">>; Line =:= <<"\n">> ->
            reject(St#st{buf = Rest}, Deadline);
        {ok, {http_request, M, Target, _Version}, _} ->
            Method = erlang_web_http:method(M),
            case health_request(Method, Target) of
                {true, Path} ->
                    {Status, Type, Body, Extra} = dispatch(Method, Path, <<>>),
                    answer_close(St, Method, Status, Type, Body, Extra);
                false ->
                    unavailable(St, Method)
            end;
        more ->
            case more(St, Deadline, false) of
                {ok, St1} -> reject(St1, Deadline);
                timeout -> unavailable(St, line_method(Buf));
                closed -> gen_tcp:close(St#st.sock)
            end;
        _ ->
            unavailable(St, line_method(Buf))
    end.

health_request(Method, Target) when Method =:= get; Method =:= head ->
    case erlang_web_http:target_path(Target) of
        {ok, Path} ->
            case erlang_web_router:route(Path) of
                {ok, erlang_web_health_h} -> {true, Path};
                _ -> false
            end;
        error ->
            false
    end;
health_request(_, _) ->
    false.

unavailable(St, Method) ->
    answer_close(St, Method, 503, ?TEXT, <<"Service Unavailable: too many connections\n">>, []).

%% -- requests -------------------------------------------------------------------------------

%% Wait for and parse a request line until Deadline. Start: when the request clock started (at
%% accept for the first request; for later ones it starts when the request line arrives).
request_line(#st{buf = Buf, opts = #opts{max_line = Max}} = St, Deadline, Start) ->
    case erlang_web_http:parse(http_bin, Buf, Max) of
        {ok, {http_request, Method, Target, Version}, Rest} ->
            Start1 = case Start of
                         undefined -> now_ms();
                         _ -> Start
                     end,
            Req = #req{method = erlang_web_http:method(Method), target = Target,
                       version = Version, deadline = Start1 + St#st.opts#opts.request_timeout},
            headers(St#st{buf = Rest}, Req);
        {ok, {http_error, Line}, Rest} when Line =:= <<"\r\n">>; Line =:= <<"\n">> ->
            %% RFC 9112 2.2: ignore empty lines before a request line (the deadline stands).
            request_line(St#st{buf = Rest}, Deadline, Start);
        more ->
            %% Idle between requests: a drain closes the connection now.
            case more(St, Deadline, true) of
                {ok, St1} -> request_line(St1, Deadline, Start);
                _ -> gen_tcp:close(St#st.sock)
            end;
        too_long ->
            error_close(St, line_method(Buf), 414, <<"request line too long">>);
        _ ->
            error_close(St, line_method(Buf), 400, <<"malformed request line">>)
    end.

headers(#st{buf = Buf, opts = #opts{max_line = Max}} = St,
        #req{method = M, headers = N} = Req) ->
    case erlang_web_http:parse(httph_bin, Buf, Max) of
        {ok, {http_header, _, Name, _, Value}, Rest} when N < ?MAX_HEADERS ->
            case header(Name, Value, Req#req{headers = N + 1}) of
                {ok, Req1} -> headers(St#st{buf = Rest}, Req1);
                {error, Why} -> error_close(St, M, 400, Why)
            end;
        {ok, {http_header, _, _, _, _}, _} ->
            error_close(St, M, 431, <<"too many header fields">>);
        {ok, http_eoh, Rest} ->
            request(St#st{buf = Rest}, Req);
        more ->
            case more(St, Req#req.deadline, false) of
                {ok, St1} -> headers(St1, Req);
                timeout -> error_close(St, M, 408, <<"request not received in time">>);
                closed -> gen_tcp:close(St#st.sock)
            end;
        too_long ->
            error_close(St, M, 431, <<"header field line too long">>);
        _ ->
            error_close(St, M, 400, <<"malformed header field">>)
    end.

header(Name, Value, Req) ->
    case binary:match(Value, [<<"\r">>, <<"\n">>]) of
        nomatch -> header1(Name, erlang_web_http:trim(Value), Req);
        _ -> {error, <<"obsolete line folding in a header field">>}
    end.

header1(<<>>, _, _) ->
    {error, <<"empty header field name">>};
header1('Content-Length', Value, #req{length = Old} = Req) ->
    case erlang_web_http:content_length(Value) of
        {ok, Len} when Old =:= undefined; Old =:= Len -> {ok, Req#req{length = Len}};
        {ok, _} -> {error, <<"conflicting Content-Length fields">>};
        error -> {error, <<"invalid Content-Length">>}
    end;
header1('Transfer-Encoding', _, Req) ->
    {ok, Req#req{chunked = true}};
header1('Host', _, #req{host = H} = Req) ->
    {ok, Req#req{host = H + 1}};
header1('Connection', Value, #req{conn = C} = Req) ->
    {ok, Req#req{conn = erlang_web_http:tokens(Value) ++ C}};
header1(<<"Expect">>, Value, Req) ->
    {ok, Req#req{expect = lists:member(<<"100-continue">>, erlang_web_http:tokens(Value))}};
header1(_, _, Req) ->
    {ok, Req}.

%% The whole head is in: check it, read the body, answer.
request(St, #req{method = M, version = {Major, _}}) when Major =/= 1 ->
    error_close(St, M, 505, <<"only HTTP/1.0 and HTTP/1.1 are served">>);
request(St, #req{method = M, target = Target} = Req) ->
    case erlang_web_http:target_path(Target) of
        {ok, Path} -> request(St, Req, Path);
        error -> error_close(St, M, 400, <<"unsupported request target">>)
    end.

request(St, #req{method = M, version = Version, host = Hosts}, _Path)
  when Version >= {1, 1}, Hosts =/= 1 ->
    %% RFC 9112 3.2: exactly one Host field in an HTTP/1.1 request.
    error_close(St, M, 400, <<"an HTTP/1.1 request needs exactly one Host field">>);
request(St, #req{method = M, chunked = true}, _Path) ->
    error_close(St, M, 400, <<"Transfer-Encoding is not supported; send Content-Length">>);
request(#st{opts = #opts{max_body = Max}} = St, #req{method = M, length = Len}, _Path)
  when is_integer(Len), Len > Max ->
    error_close(St, M, 413, <<"request body too large">>);
request(St, #req{method = M} = Req, Path) ->
    case read_body(St, Req) of
        {ok, Body, St1} -> respond(St1, Req, Path, Body);
        timeout -> error_close(St, M, 408, <<"request not received in time">>);
        closed -> gen_tcp:close(St#st.sock)
    end.

read_body(St, #req{length = Len}) when Len =:= undefined; Len =:= 0 ->
    {ok, <<>>, St};
read_body(#st{buf = Buf} = St, #req{version = Version, expect = Expect, length = Len} = Req) ->
    Sent = case Expect andalso Version >= {1, 1} andalso byte_size(Buf) < Len of
               true -> send(St, <<"HTTP/1.1 100 Continue\r\n\r\n">>);
               false -> ok
           end,
    case Sent of
        ok -> body(St, Req#req.deadline, Len);
        {error, _} -> closed
    end.

body(#st{buf = Buf} = St, _Deadline, Len) when byte_size(Buf) >= Len ->
    <<Body:Len/binary, Rest/binary>> = Buf,
    {ok, Body, St#st{buf = Rest}};
body(St, Deadline, Len) ->
    case more(St, Deadline, false) of
        {ok, St1} -> body(St1, Deadline, Len);
        Other -> Other
    end.

respond(St, #req{method = Method, version = Version, conn = Tokens}, Path, Body) ->
    {Status, Type, RespBody, Extra} = dispatch(Method, Path, Body),
    ok = log_server_error(Method, Path, Status, RespBody),
    Draining = St#st.draining orelse draining(),
    Conn = case Draining of
               true -> close;
               false -> erlang_web_http:keep_alive(Version, Tokens)
           end,
    ok = count(Status),
    Resp = erlang_web_http:response(Status, Conn, Extra, Type, RespBody, Method =/= head,
                                    erlang_web_clock:date()),
    #st{opts = #opts{idle_timeout = Idle}} = St,
    case send(St, Resp) of
        ok when Conn =:= close -> close_gracefully(St);
        ok -> request_line(St#st{draining = Draining}, now_ms() + Idle, undefined);
        {error, _} -> gen_tcp:close(St#st.sock)
    end.

dispatch(Method, Path, Body) ->
    case erlang_web_router:route(Path) of
        not_found ->
            {404, ?TEXT, <<"Not Found\n">>, []};
        {ok, Handler} ->
            Allowed = Handler:allowed_methods(),
            Call = case Method of
                       head -> get;
                       _ -> Method
                   end,
            case lists:member(Call, Allowed) of
                true -> call(Handler, Call, Body);
                false ->
                    {405, ?TEXT, <<"Method Not Allowed\n">>,
                     [{<<"Allow">>, erlang_web_http:allow(Allowed)}]}
            end
    end.

call(Handler, Method, Body) ->
    try Handler:handle(Method, Body) of
        {Status, Type, RespBody} -> {Status, Type, RespBody, []}
    catch
        ?EXCEPTION(Class, Reason, Stack) ->
            error_logger:error_msg("erlang_web: ~p:handle(~p) failed: ~p:~p~n~p~n",
                                   [Handler, Method, Class, Reason, ?STACKTRACE(Stack)]),
            {500, ?TEXT, <<"Internal Server Error\n">>, []}
    end.

%% A request answered with a 5xx is a line in the log (on an instance: its console, what
%% `invoke logs' shows), with the start of the answer, which says why (a health check's 503 names
%% what is not up).
log_server_error(Method, Path, Status, Body) when Status >= 500 ->
    Text = binary:replace(iolist_to_binary(Body), [<<"\r">>, <<"\n">>], <<" ">>, [global]),
    Why = binary:part(Text, 0, erlang:min(byte_size(Text), 200)),
    error_logger:warning_msg("erlang_web: ~s ~ts answered ~b: ~ts~n",
                             [method_name(Method), Path, Status, Why]);
log_server_error(_Method, _Path, _Status, _Body) ->
    ok.

method_name(get) -> <<"GET">>;
method_name(head) -> <<"HEAD">>;
method_name(post) -> <<"POST">>;
method_name({other, Name}) -> Name.

draining() ->
    receive
        {?MODULE, drain} -> true
    after 0 ->
        false
    end.

error_close(St, Method, Status, Why) ->
    Body = [erlang_web_http:reason(Status), <<": ">>, Why, $\n],
    answer_close(St, Method, Status, ?TEXT, Body, []).

%% Send a response with `Connection: close' (no body for HEAD), then close.
answer_close(St, Method, Status, Type, Body, Extra) ->
    ok = count(Status),
    Resp = erlang_web_http:response(Status, close, Extra, Type, Body, Method =/= head,
                                    erlang_web_clock:date()),
    _ = send(St, Resp),
    close_gracefully(St).

count(Status) when Status >= 400 -> erlang_web_events:count(Status);
count(_) -> ok.

%% The method of a request line the parser could not read (only whether it is HEAD matters).
line_method(Buf) ->
    case erlang_web_http:head_request(Buf) of
        true -> head;
        false -> get
    end.

%% -- the socket -----------------------------------------------------------------------------

%% Wait for more bytes until Deadline, arming one delivery. Idle: whether a drain request ends
%% the wait (only between requests; during one it is seen when the response is sent).
more(#st{sock = Sock, buf = Buf} = St, Deadline, Idle) ->
    case inet:setopts(Sock, [{active, once}]) of
        ok ->
            receive
                {tcp, Sock, Data} -> {ok, St#st{buf = <<Buf/binary, Data/binary>>}};
                {tcp_closed, Sock} -> closed;
                {tcp_error, Sock, _} -> closed;
                {?MODULE, drain} when Idle -> closed
            after remaining(Deadline) ->
                timeout
            end;
        {error, _} ->
            closed
    end.

%% gen_tcp:send/2 blocks while the client does not read. A timer asks erlang_web_conns to end
%% this process if the send is not done within send_timeout; if it fired just as the send
%% returned, the connection is treated as timed out all the same.
send(#st{sock = Sock, opts = #opts{send_timeout = Timeout}}, Data) ->
    TRef = erlang:send_after(Timeout, erlang_web_conns, {send_timeout, self()}),
    Result = gen_tcp:send(Sock, Data),
    case erlang:cancel_timer(TRef) of
        false -> {error, timeout};
        _ -> Result
    end.

%% Half-close, then read and discard what the client still sends (bounded), then close.
close_gracefully(#st{sock = Sock}) ->
    _ = gen_tcp:shutdown(Sock, write),
    discard(Sock, now_ms() + ?LINGER_MS, 0),
    gen_tcp:close(Sock).

discard(Sock, Until, Bytes) when Bytes < ?LINGER_BYTES ->
    case inet:setopts(Sock, [{active, once}]) of
        ok ->
            receive
                {tcp, Sock, Data} -> discard(Sock, Until, Bytes + byte_size(Data));
                {tcp_closed, Sock} -> ok;
                {tcp_error, Sock, _} -> ok
            after remaining(Until) ->
                ok
            end;
        {error, _} ->
            ok
    end;
discard(_, _, _) ->
    ok.

remaining(Deadline) ->
    erlang:max(0, Deadline - now_ms()).

-ifdef(OTP_RELEASE).
now_ms() ->
    erlang:monotonic_time(millisecond).
-else.
%% OTP 17 has no monotonic clock; os:timestamp/0 is wall-clock time, which is good enough for
%% timeouts of seconds.
now_ms() ->
    {Mega, Sec, Micro} = os:timestamp(),
    (Mega * 1000000 + Sec) * 1000 + Micro div 1000.
-endif.
