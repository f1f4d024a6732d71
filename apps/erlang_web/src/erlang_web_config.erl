%% @doc The application's configuration: every key, its default and its check, in one place.
%%
%% Configuration comes only from the application environment (sys.config baked into the image).
%% A value of the wrong type is reported by {@link validate/0} when the application starts, naming
%% the key, the value and what was expected, and the application refuses to start.
-module(erlang_web_config).

-export([get/1]).
-export([defaults/0]).
-export([validate/0]).
-export([check/2]).

-export_type([key/0]).

-type key() :: port | greeting | acceptors | max_connections | request_timeout | idle_timeout
             | send_timeout | max_body | max_line | log_interval | scratch_dir | storage | build_id
             | config_digest | image_target | env.

-define(APP, erlang_web).

%% @doc Every key with its default.
-spec defaults() -> [{key(), term()}].
defaults() ->
    [{port, 8080},                                %% TCP port to listen on (0: any free port)
     {greeting, <<"Hello from erlang_web\n">>},   %% body of GET /, UTF-8
     {acceptors, 8},                              %% processes blocked in accept/1
     {max_connections, 1024},                     %% beyond this, new connections get 503
     {request_timeout, 5000},                     %% ms for a whole request to arrive
     %% ms a keep-alive connection may wait idle. Longer than the load balancer's own idle
     %% timeout (an ALB's is 60 s by default), so that the balancer, not this server, closes an
     %% idle connection: else it may send a request on a connection this end is closing (502).
     {idle_timeout, 75000},
     {send_timeout, 10000},                       %% ms a response may take to be sent
     {max_body, 65536},                           %% bytes; larger request bodies get 413
     {max_line, 8192},                            %% bytes in a request line (414) or header (431)
     {log_interval, 10000},                       %% ms between reports of errors counted
     {scratch_dir, "/scratch"},                   %% mnesia's directory when storage is on disc
     {storage, auto},                             %% auto | disc | ram (see erlang_web_storage)
     {build_id, <<"unknown">>},                   %% the rest are baked in at build time and
     {config_digest, <<"unknown">>},              %% only reported by GET /version
     {image_target, <<"unknown">>},
     {env, <<"unknown">>}].

%% @doc The checked value of Key: the app env's value, or the default when it is unset.
%% Errors with `{bad_config, Key, Value, Expected}' on a bad value ({@link validate/0} at start
%% makes sure that cannot happen later).
-spec get(key()) -> term().
get(Key) ->
    Raw = raw(Key),
    case check(Key, Raw) of
        {ok, Value} -> Value;
        {error, Expected} -> erlang:error({bad_config, Key, Raw, Expected})
    end.

%% @doc Check every key; the first bad one is returned.
-spec validate() -> ok | {error, {bad_config, key(), term(), string()}}.
validate() ->
    validate([K || {K, _} <- defaults()]).

validate([]) ->
    ok;
validate([Key | Rest]) ->
    Raw = raw(Key),
    case check(Key, Raw) of
        {ok, _} -> validate(Rest);
        {error, Expected} -> {error, {bad_config, Key, Raw, Expected}}
    end.

raw(Key) ->
    case application:get_env(?APP, Key) of
        {ok, Value} -> Value;
        undefined ->
            {Key, Default} = lists:keyfind(Key, 1, defaults()),
            Default
    end.

%% @doc Check and normalise one value: strings become binaries (or the reverse for paths).
-spec check(key(), term()) -> {ok, term()} | {error, Expected :: string()}.
check(port, P) when is_integer(P), P >= 0, P =< 65535 -> {ok, P};
check(port, _) -> {error, "an integer 0..65535"};
check(greeting, G) -> utf8(G);
check(acceptors, N) -> pos_int(N);
check(max_connections, N) -> pos_int(N);
check(request_timeout, N) -> pos_int(N);
check(idle_timeout, N) -> pos_int(N);
check(send_timeout, N) -> pos_int(N);
check(log_interval, N) -> pos_int(N);
check(max_line, N) when is_integer(N), N >= 64 -> {ok, N};
check(max_line, _) -> {error, "an integer of at least 64 (bytes)"};
check(max_body, N) when is_integer(N), N >= 0 -> {ok, N};
check(max_body, _) -> {error, "a non-negative integer (bytes)"};
check(scratch_dir, D) when is_binary(D), D =/= <<>> -> check(scratch_dir, binary_to_list(D));
check(scratch_dir, D) when is_list(D), D =/= [] ->
    case io_lib:printable_unicode_list(D) of
        true -> {ok, D};
        false -> {error, "a directory path (string)"}
    end;
check(scratch_dir, _) -> {error, "a directory path (string)"};
check(storage, S) when S =:= auto; S =:= disc; S =:= ram -> {ok, S};
check(storage, _) -> {error, "one of the atoms auto, disc, ram"};
check(build_id, B) -> utf8(B);
check(config_digest, B) -> utf8(B);
check(image_target, B) -> utf8(B);
check(env, B) -> utf8(B).

pos_int(N) when is_integer(N), N > 0 -> {ok, N};
pos_int(_) -> {error, "a positive integer"}.

%% A UTF-8 binary, or a string (list of code points) converted to one.
utf8(B) when is_binary(B) ->
    case unicode:characters_to_binary(B) of
        B -> {ok, B};
        _ -> {error, "a UTF-8 binary or a string"}
    end;
utf8(L) when is_list(L) ->
    case catch unicode:characters_to_binary(L) of
        B when is_binary(B) -> {ok, B};
        _ -> {error, "a UTF-8 binary or a string"}
    end;
utf8(_) ->
    {error, "a UTF-8 binary or a string"}.
