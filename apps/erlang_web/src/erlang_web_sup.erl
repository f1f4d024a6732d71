%% @doc The top supervisor.
%%
%% Children start in order, dependencies first: the Date clock, the error reports
%% (erlang_web_events), the storage (mnesia), and last the listener, so no connection is
%% accepted before what it needs exists. The storage reports
%% its own progress (erlang_web_status), so the listener does not wait for mnesia to load: until
%% then GET /health answers 503 "starting".
-module(erlang_web_sup).

-behaviour(supervisor).

-export([start_link/0]).
-export([init/1]).

%% @doc Start the supervisor (registered as erlang_web_sup).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @private
-spec init([]) -> {ok, {{one_for_one, non_neg_integer(), pos_integer()},
                        [supervisor:child_spec()]}}.
init([]) ->
    %% The status table belongs to this process so that it survives restarts of the workers.
    ok = erlang_web_status:create(),
    ok = erlang_web_events:create(),
    %% None of the children is expected to crash. Three restarts within ten seconds means the
    %% fault is persistent (the port is taken, the disc is gone); then the application stops, the
    %% node stops with it, the instance fails its health check and is replaced, rather than
    %% restarting forever inside a unikernel nobody can log in to.
    Flags = {one_for_one, 3, 10},
    Children =
        [{erlang_web_clock, {erlang_web_clock, start_link, []},
          permanent, 1000, worker, [erlang_web_clock]},
         {erlang_web_events, {erlang_web_events, start_link, []},
          permanent, 1000, worker, [erlang_web_events]},
         {erlang_web_storage, {erlang_web_storage, start_link, []},
          permanent, 10000, worker, [erlang_web_storage]},
         {erlang_web_listener_sup, {erlang_web_listener_sup, start_link, []},
          permanent, infinity, supervisor, [erlang_web_listener_sup]}],
    {ok, {Flags, Children}}.
