%% @doc One HTTP/1.x connection: reads requests, calls handlers, writes responses.
%%
%% Started (linked) by erlang_web_conns, which counts connections; the acceptor then makes this
%% process the socket's controlling process and sends it the socket.
%%
%% Parsing is the VM's: the socket is in `{packet, http_bin}' mode for the request line, the
%% socket switches itself to `httph_bin' for the header lines that follow and back to `http_bin'
%% after the empty line; the body is read in `raw' mode.
%%
%% Timeouts:
%% - request_timeout: a whole request (line, headers, body) must arrive within it. The clock
%%   starts at accept for the first request on a connection, and when the request line has
%%   arrived for later ones. A request that times out after its request line gets 408; one that
%%   has not completed its request line is closed without a response (the socket's parser does
%%   not say whether part of a line is waiting).
%% - idle_timeout: how long a keep-alive connection may wait for its next request line; then it
%%   is closed without a response. A client that sends part of a request line and stalls is
%%   therefore bounded by idle_timeout, like any idle connection.
%% A malformed request gets 400 (413 for a body over max_body) and the connection is closed,
%% because after a framing error the rest of the stream cannot be trusted.
-module(erlang_web_conn).

-export([start_link/2]).
-export([init/2]).
-export([drain/1]).
-export([opts/0]).

-export_type([mode/0]).
-export_type([opts/0]).

-record(opts, {request_timeout :: pos_integer(),
               idle_timeout :: pos_integer(),
               max_body :: non_neg_integer()}).

-opaque opts() :: #opts{}.
%% serve: a normal connection; reject: over max_connections, answered 503 and closed.
-type mode() :: serve | reject.

-record(st, {sock :: inet:socket(),
             opts :: #opts{},
             %% whether the socket was switched to raw for a body (else it is back in
             %% http_bin by itself after the headers' empty line)
             raw = false :: boolean(),
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

%% @doc The connection options, read once from the configuration (by erlang_web_conns).
-spec opts() -> opts().
opts() ->
    #opts{request_timeout = erlang_web_config:get(request_timeout),
          idle_timeout = erlang_web_config:get(idle_timeout),
          max_body = erlang_web_config:get(max_body)}.

%% @doc Start a connection process linked to the caller; it waits for its socket.
-spec start_link(mode(), opts()) -> {ok, pid()}.
start_link(Mode, Opts) ->
    {ok, proc_lib:spawn_link(?MODULE, init, [Mode, Opts])}.

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
            run(Mode, Sock, Opts)
    after ?HANDOFF_MS ->
        ok
    end.

run(reject, Sock, _Opts) ->
    %% The client may not have sent its request yet; the answer does not depend on it.
    Resp = erlang_web_http:response(503, close, [], <<"text/plain; charset=utf-8">>,
                                    <<"Service Unavailable: too many connections\n">>, true,
                                    erlang_web_clock:date()),
    _ = gen_tcp:send(Sock, Resp),
    close_gracefully(Sock);
run(serve, Sock, #opts{request_timeout = RT} = Opts) ->
    St = #st{sock = Sock, opts = Opts},
    Accepted = now_ms(),
    case inet:setopts(Sock, [{active, once}]) of
        ok -> await(St, Accepted + RT, Accepted);
        {error, _} -> gen_tcp:close(Sock)
    end.

%% Wait for the next request after a response on a persistent connection.
next_request(#st{sock = Sock, opts = #opts{idle_timeout = Idle}, raw = Raw} = St) ->
    Opts = case Raw of
               true -> [{packet, http_bin}, {active, once}];
               false -> [{active, once}]
           end,
    case inet:setopts(Sock, Opts) of
        ok -> await(St#st{raw = false}, now_ms() + Idle, undefined);
        {error, _} -> gen_tcp:close(Sock)
    end.

%% Wait for a request line until Deadline, with the socket in {active, once} so that a drain
%% request is seen while idle. Start: when the request clock started (at accept for the first
%% request; for later ones it starts when the request line arrives).
await(#st{sock = Sock, opts = #opts{request_timeout = RT}} = St, Deadline, Start) ->
    receive
        {http, Sock, {http_request, Method, Target, Version}} ->
            Start1 = case Start of
                         undefined -> now_ms();
                         _ -> Start
                     end,
            Req = #req{method = erlang_web_http:method(Method), target = Target,
                       version = Version, deadline = Start1 + RT},
            read_headers(St, Req);
        {http, Sock, {http_error, Line}} when Line =:= <<"\r\n">>; Line =:= <<"\n">> ->
            %% RFC 7230 3.5: ignore empty lines before a request line (the deadline stands).
            case inet:setopts(Sock, [{active, once}]) of
                ok -> await(St, Deadline, Start);
                {error, _} -> gen_tcp:close(Sock)
            end;
        {http, Sock, _} ->
            error_close(St, 400, <<"malformed request line">>);
        {tcp_error, Sock, emsgsize} ->
            error_close(St, 400, <<"request line too long">>);
        {tcp_closed, Sock} ->
            gen_tcp:close(Sock);
        {tcp_error, Sock, _} ->
            gen_tcp:close(Sock);
        {?MODULE, drain} ->
            gen_tcp:close(Sock)
    after remaining(Deadline) ->
        %% No complete request line in time. The socket's parser does not tell whether part of
        %% one arrived, so this is a plain close (as for an idle connection), not a 408.
        gen_tcp:close(Sock)
    end.

read_headers(#st{sock = Sock} = St, #req{deadline = Deadline, headers = N} = Req) ->
    case gen_tcp:recv(Sock, 0, remaining(Deadline)) of
        {ok, {http_header, _, Name, _, Value}} when N < ?MAX_HEADERS ->
            case header(Name, Value, Req#req{headers = N + 1}) of
                {ok, Req1} -> read_headers(St, Req1);
                {error, Why} -> error_close(St, 400, Why)
            end;
        {ok, {http_header, _, _, _, _}} ->
            error_close(St, 400, <<"too many header fields">>);
        {ok, http_eoh} ->
            request(St, Req);
        {ok, _} ->
            error_close(St, 400, <<"malformed header field">>);
        {error, timeout} ->
            error_close(St, 408, <<"request not received in time">>);
        {error, emsgsize} ->
            error_close(St, 400, <<"header line too long">>);
        {error, _} ->
            gen_tcp:close(Sock)
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
request(St, #req{version = {Major, _}}) when Major =/= 1 ->
    error_close(St, 505, <<"only HTTP/1.0 and HTTP/1.1 are served">>);
request(St, #req{target = Target} = Req) ->
    case erlang_web_http:target_path(Target) of
        {ok, Path} -> request(St, Req, Path);
        error -> error_close(St, 400, <<"unsupported request target">>)
    end.

request(St, #req{version = Version, host = Hosts}, _Path) when Version >= {1, 1}, Hosts =/= 1 ->
    %% RFC 7230 5.4: exactly one Host field in an HTTP/1.1 request.
    error_close(St, 400, <<"an HTTP/1.1 request needs exactly one Host field">>);
request(St, #req{chunked = true}, _Path) ->
    error_close(St, 400, <<"Transfer-Encoding is not supported; send Content-Length">>);
request(#st{opts = #opts{max_body = Max}} = St, #req{length = Len}, _Path)
  when is_integer(Len), Len > Max ->
    error_close(St, 413, <<"request body too large">>);
request(St, #req{length = Len} = Req, Path) ->
    case read_body(St, Req, Len) of
        {ok, Body} -> respond(St#st{raw = is_integer(Len) andalso Len > 0}, Req, Path, Body);
        timeout -> error_close(St, 408, <<"request not received in time">>);
        closed -> gen_tcp:close(St#st.sock)
    end.

read_body(_St, _Req, undefined) ->
    {ok, <<>>};
read_body(_St, _Req, 0) ->
    {ok, <<>>};
read_body(#st{sock = Sock}, #req{version = Version, expect = Expect, deadline = Deadline}, Len) ->
    _ = case Expect andalso Version >= {1, 1} of
            true -> gen_tcp:send(Sock, <<"HTTP/1.1 100 Continue\r\n\r\n">>);
            false -> ok
        end,
    ok = inet:setopts(Sock, [{packet, raw}]),
    case gen_tcp:recv(Sock, Len, remaining(Deadline)) of
        {ok, Body} -> {ok, Body};
        {error, timeout} -> timeout;
        {error, _} -> closed
    end.

respond(#st{sock = Sock} = St, #req{method = Method, version = Version, conn = Tokens}, Path,
        Body) ->
    {Status, Type, RespBody, Extra} = dispatch(Method, Path, Body),
    ok = log_server_error(Method, Path, Status, RespBody),
    Draining = St#st.draining orelse draining(),
    Conn = case Draining of
               true -> close;
               false -> erlang_web_http:keep_alive(Version, Tokens)
           end,
    Resp = erlang_web_http:response(Status, Conn, Extra, Type, RespBody, Method =/= head,
                                    erlang_web_clock:date()),
    case gen_tcp:send(Sock, Resp) of
        ok when Conn =:= close -> close_gracefully(Sock);
        ok -> next_request(St#st{draining = Draining});
        {error, _} -> gen_tcp:close(Sock)
    end.

dispatch(Method, Path, Body) ->
    case erlang_web_router:route(Path) of
        not_found ->
            {404, <<"text/plain; charset=utf-8">>, <<"Not Found\n">>, []};
        {ok, Handler} ->
            Allowed = Handler:allowed_methods(),
            Call = case Method of
                       head -> get;
                       _ -> Method
                   end,
            case lists:member(Call, Allowed) of
                true -> call(Handler, Call, Body);
                false ->
                    {405, <<"text/plain; charset=utf-8">>, <<"Method Not Allowed\n">>,
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
            {500, <<"text/plain; charset=utf-8">>, <<"Internal Server Error\n">>, []}
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

error_close(#st{sock = Sock}, Status, Why) ->
    Body = [erlang_web_http:reason(Status), <<": ">>, Why, $\n],
    Resp = erlang_web_http:response(Status, close, [], <<"text/plain; charset=utf-8">>, Body,
                                    true, erlang_web_clock:date()),
    _ = gen_tcp:send(Sock, Resp),
    close_gracefully(Sock).

%% Half-close, then read and discard what the client still sends (bounded), then close.
close_gracefully(Sock) ->
    _ = gen_tcp:shutdown(Sock, write),
    _ = inet:setopts(Sock, [{packet, raw}, {active, false}]),
    discard(Sock, now_ms() + ?LINGER_MS, 0),
    gen_tcp:close(Sock).

discard(Sock, Until, Bytes) when Bytes < ?LINGER_BYTES ->
    case gen_tcp:recv(Sock, 0, remaining(Until)) of
        {ok, Data} -> discard(Sock, Until, Bytes + byte_size(Data));
        {error, _} -> ok
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
