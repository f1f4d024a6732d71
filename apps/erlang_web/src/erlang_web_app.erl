%% @doc The erlang_web application: an HTTP service with an mnesia-backed counter.
%%
%% OTP 17 rule: this application must also compile and run on Erlang/OTP 17 (LING, Erlang on Xen),
%% so it uses only APIs that exist there unless they are guarded by `-ifdef(OTP_RELEASE).'
%% (defined from OTP 21 on): no logger (error_logger), no rand, no erlang:monotonic_time/1
%% unguarded, no maps (child specs are tuples), no variable map keys in patterns, no
%% string:lexemes/trim (string:tokens and our own trim), no handle_continue, no NIFs.
-module(erlang_web_app).

-behaviour(application).

-export([start/0]).
-export([start/2]).
-export([prep_stop/1]).
-export([stop/1]).

%% @doc Start the application and what it depends on (for `-s erlang_web_app' boot lines).
-spec start() -> ok.
start() ->
    {ok, _} = application:ensure_all_started(erlang_web),
    ok.

%% @doc Check the configuration, then start the top supervisor, which starts the storage first
%% and the listener last.
-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    case erlang_web_config:validate() of
        ok ->
            log_started(erlang_web_sup:start_link());
        {error, {bad_config, Key, Value, Expected}} = Error ->
            error_logger:error_msg("erlang_web: bad configuration: ~p = ~p, expected ~s~n",
                                   [Key, Value, Expected]),
            Error
    end.

%% The start is a line in the log (on an instance: its console, what `invoke logs' shows).
log_started({ok, _} = Started) ->
    error_logger:info_msg("erlang_web: started (build ~s, env ~s)~n",
                          [erlang_web_config:get(build_id), erlang_web_config:get(env)]),
    Started;
log_started(Other) ->
    Other.

%% @doc Before the supervision tree is stopped: stop accepting and let the connections finish
%% their requests (at most request_timeout).
-spec prep_stop(State) -> State when State :: term().
prep_stop(State) ->
    erlang_web_listener:drain(erlang_web_config:get(request_timeout)),
    State.

%% @doc Nothing left to clean up: the supervision tree is gone.
-spec stop(term()) -> ok.
stop(_State) ->
    ok.
