%% @doc Shared, read-mostly state: the storage and listener status and the cached Date header.
%%
%% A named public ETS table created by the top supervisor, so it outlives any one worker: a worker
%% that crashes and restarts finds it still there and overwrites its own entry.
-module(erlang_web_status).

-export([create/0]).
-export([set/2]).
-export([get/2]).

-export_type([storage/0]).
-export_type([listener/0]).

-define(TAB, erlang_web_status).

-type storage() :: starting | {ready, disc | ram} | {failed, binary()}.
-type listener() :: starting | up | draining | down.

%% @doc Create the table, owned by the calling process.
-spec create() -> ok.
create() ->
    ?TAB = ets:new(?TAB, [named_table, public, set, {read_concurrency, true}]),
    ok.

%% @doc Store a value.
-spec set(storage | listener | date, term()) -> ok.
set(Key, Value) ->
    true = ets:insert(?TAB, {Key, Value}),
    ok.

%% @doc Read a value; Default when it (or the table) is not there.
-spec get(storage | listener | date, term()) -> term().
get(Key, Default) ->
    try ets:lookup(?TAB, Key) of
        [{Key, Value}] -> Value;
        [] -> Default
    catch
        error:badarg -> Default
    end.
