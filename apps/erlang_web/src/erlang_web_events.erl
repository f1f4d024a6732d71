%% @doc Counts what goes wrong with requests and connections, and logs it at a bounded rate.
%%
%% Error responses (every 4xx and 5xx status) and connection events (an accept out of file
%% descriptors, a connection closed without an answer because every limit was reached, a response
%% not sent in time) are counted in a public ETS table, which costs a connection process one
%% counter update and no message. This process logs what was counted since its last report, at
%% most one line every log_interval ms, so a flood of bad requests or 503s cannot flood the log.
-module(erlang_web_events).

-behaviour(gen_server).

-export([create/0]).
-export([count/1]).
-export([totals/0]).
-export([start_link/0]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([code_change/3]).

-export_type([event/0]).

-define(TAB, erlang_web_events).

%% A response status, or: emfile (accept found no free file descriptor), no_answer (a connection
%% over max_connections closed unanswered, as even the processes that answer 503 were all busy),
%% send_timeout (a response not taken by the client within send_timeout; connection closed).
-type event() :: pos_integer() | emfile | no_answer | send_timeout.

-record(state, {interval :: pos_integer(),
                reported = [] :: [{event(), non_neg_integer()}]}).

%% @doc Create the table, owned by the calling process (the top supervisor, so the counts survive
%% a restart of the logging process).
-spec create() -> ok.
create() ->
    ?TAB = ets:new(?TAB, [named_table, public, set, {write_concurrency, true}]),
    ok.

%% @doc Count one event. Never fails (not even before the table exists).
-spec count(event()) -> ok.
count(Event) ->
    try ets:update_counter(?TAB, Event, 1) of
        _ -> ok
    catch
        error:badarg ->
            %% First of its kind (OTP 17 has no update_counter/4 with a default), or no table.
            _ = (catch ets:insert_new(?TAB, {Event, 0})),
            _ = (catch ets:update_counter(?TAB, Event, 1)),
            ok
    end.

%% @doc Every event counted since the application started, with its count, sorted.
-spec totals() -> [{event(), non_neg_integer()}].
totals() ->
    try lists:sort(ets:tab2list(?TAB)) catch error:badarg -> [] end.

%% @doc Start the reporting process (registered as erlang_web_events).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    Interval = erlang_web_config:get(log_interval),
    _ = erlang:send_after(Interval, self(), report),
    {ok, #state{interval = Interval, reported = totals()}}.

%% @private
-spec handle_call(term(), {pid(), term()}, #state{}) -> {reply, ok, #state{}}.
handle_call(_Request, _From, State) ->
    {reply, ok, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(report, #state{interval = Interval, reported = Before} = State) ->
    Now = totals(),
    case since(Now, Before) of
        [] -> ok;
        New ->
            error_logger:warning_msg("erlang_web: in the last ~s s: ~s~n",
                                     [seconds(Interval), describe(New)])
    end,
    _ = erlang:send_after(Interval, self(), report),
    {noreply, State#state{reported = Now}};
handle_info(_Msg, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    ok.

%% @private
-spec code_change(term(), #state{}, term()) -> {ok, #state{}}.
code_change(_OldVsn, State, _Extra) ->
    {ok, State}.

%% What was counted after Before was taken: events with a higher count now, and by how much.
since(Now, Before) ->
    [{E, N - before(E, Before)} || {E, N} <- Now, N > before(E, Before)].

before(Event, Before) ->
    case lists:keyfind(Event, 1, Before) of
        {Event, N} -> N;
        false -> 0
    end.

seconds(Ms) when Ms rem 1000 =:= 0 -> integer_to_list(Ms div 1000);
seconds(Ms) -> io_lib:format("~.1f", [Ms / 1000]).

describe(Counts) ->
    string:join([integer_to_list(N) ++ " x " ++ what(E) || {E, N} <- Counts], ", ").

what(emfile) -> "accept out of file descriptors (raise the open-files limit)";
what(no_answer) -> "connection closed unanswered (over max_connections and 503s)";
what(send_timeout) -> "response not taken by the client within send_timeout";
what(Status) -> integer_to_list(Status) ++ " " ++ binary_to_list(erlang_web_http:reason(Status)).
