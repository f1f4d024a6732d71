%% @doc The listener: connection tracker, listen socket owner, acceptor pool, in that order.
%%
%% rest_for_one: if the tracker dies its connections die with it (they are linked), and the
%% socket and acceptors are restarted behind a fresh one; if the socket owner dies, the acceptors
%% (blocked on its socket) are restarted on the new socket.
-module(erlang_web_listener_sup).

-behaviour(supervisor).

-export([start_link/0]).
-export([init/1]).

%% @doc Start the supervisor (registered as erlang_web_listener_sup).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @private
-spec init([]) -> {ok, {{rest_for_one, non_neg_integer(), pos_integer()},
                        [supervisor:child_spec()]}}.
init([]) ->
    %% As for the top supervisor: a fault that repeats three times in ten seconds is escalated
    %% (the top supervisor restarts the whole listener once, then gives up).
    Flags = {rest_for_one, 3, 10},
    Children =
        [{erlang_web_conns, {erlang_web_conns, start_link, []},
          permanent, 5000, worker, [erlang_web_conns]},
         {erlang_web_listener, {erlang_web_listener, start_link, []},
          permanent, 5000, worker, [erlang_web_listener]},
         {erlang_web_acceptor_sup, {erlang_web_acceptor_sup, start_link, []},
          permanent, infinity, supervisor, [erlang_web_acceptor_sup]}],
    {ok, {Flags, Children}}.
