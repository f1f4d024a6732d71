%% @doc The acceptor pool: `acceptors' processes blocked in accept on the listener's socket.
-module(erlang_web_acceptor_sup).

-behaviour(supervisor).

-export([start_link/0]).
-export([init/1]).

%% @doc Start the supervisor (registered as erlang_web_acceptor_sup).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @private
-spec init([]) -> {ok, {{one_for_one, pos_integer(), pos_integer()},
                        [supervisor:child_spec()]}}.
init([]) ->
    N = erlang_web_config:get(acceptors),
    LSock = erlang_web_listener:socket(),
    %% An acceptor only exits when the listen socket is closed, and then all of them do at once.
    %% Allow a few lone crashes, scaled with the pool (1 + ceil(log2 N)), but escalate a whole
    %% pool failing together to the listener supervisor, which restarts the socket.
    Flags = {one_for_one, 1 + ceil_log2(N), 5},
    Children = [{{acceptor, I}, {erlang_web_acceptor, start_link, [LSock]},
                 permanent, brutal_kill, worker, [erlang_web_acceptor]}
                || I <- lists:seq(1, N)],
    %% The children are started right after this returns; if one fails, this supervisor fails.
    ok = erlang_web_status:set(listener, up),
    {ok, {Flags, Children}}.

ceil_log2(N) -> ceil_log2(N, 0).

ceil_log2(N, K) when (1 bsl K) >= N -> K;
ceil_log2(N, K) -> ceil_log2(N, K + 1).
