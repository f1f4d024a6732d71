%% @doc Keeps the current HTTP Date header value in erlang_web_status, refreshed every second,
%% so connections do not format a date per response.
-module(erlang_web_clock).

-behaviour(gen_server).

-export([start_link/0]).
-export([date/0]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([code_change/3]).

-define(TICK_MS, 1000).

%% @doc Start the clock (registered as erlang_web_clock).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The current date for a Date header, e.g. `<<"Sun, 06 Nov 1994 08:49:37 GMT">>'.
-spec date() -> binary().
date() ->
    case erlang_web_status:get(date, undefined) of
        undefined -> now_date();
        Date -> Date
    end.

%% @private
-spec init([]) -> {ok, undefined}.
init([]) ->
    tick(),
    {ok, undefined}.

%% @private
-spec handle_call(term(), {pid(), term()}, undefined) -> {reply, ok, undefined}.
handle_call(_Request, _From, State) ->
    {reply, ok, State}.

%% @private
-spec handle_cast(term(), undefined) -> {noreply, undefined}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), undefined) -> {noreply, undefined}.
handle_info(tick, State) ->
    tick(),
    {noreply, State};
handle_info(_Msg, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), undefined) -> ok.
terminate(_Reason, _State) ->
    ok.

%% @private
-spec code_change(term(), undefined, term()) -> {ok, undefined}.
code_change(_OldVsn, State, _Extra) ->
    {ok, State}.

tick() ->
    ok = erlang_web_status:set(date, now_date()),
    _ = erlang:send_after(?TICK_MS, self(), tick),
    ok.

now_date() ->
    erlang_web_http:rfc1123_date(calendar:universal_time()).
