%% @doc Sets up mnesia for the counter and answers for it.
%%
%% The `storage' setting decides where the counter lives:
%% - auto (default): on disc (disc_copies) with mnesia's directory = scratch_dir when that is an
%%   existing writable directory, else in RAM (ram_copies);
%% - disc: on disc at scratch_dir; if that is not usable the application keeps serving but the
%%   storage is reported failed, so GET /health stays 503 (a deploy of a misconfigured build
%%   fails its health check instead of silently losing data);
%% - ram: in RAM.
%%
%% mnesia's directory is scratch_dir itself, not a subdirectory: on LING the scratch volume is
%% GooFS, a flat file system. mnesia is started before this application (it is in the .app's
%% `applications') with no disc schema; when the counter goes on disc this process stops it,
%% points it at scratch_dir, creates the schema there if there is none, and starts it again. That
%% decision is made here, at runtime, because whether the scratch volume is there is only known
%% on the instance.
%%
%% The setup runs after init/1 returns, so a slow mnesia start does not hold up the listener;
%% progress is published in erlang_web_status for GET /health.
-module(erlang_web_storage).

-behaviour(gen_server).

-export([start_link/0]).
-export([value/0]).
-export([increment/0]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([code_change/3]).

-define(TAB, erlang_web_counter).
-define(KEY, counter).
-define(LOAD_TIMEOUT_MS, 30000).

-record(state, {mode :: auto | disc | ram,
                dir :: string()}).

%% @doc Start the storage process (registered as erlang_web_storage).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The counter's value.
-spec value() -> {ok, non_neg_integer()} | {error, unavailable}.
value() ->
    when_ready(fun() ->
                       case mnesia:dirty_read(?TAB, ?KEY) of
                           [] -> 0;
                           [{?TAB, ?KEY, N}] -> N
                       end
               end).

%% @doc Add one to the counter and return the new value.
-spec increment() -> {ok, pos_integer()} | {error, unavailable}.
increment() ->
    when_ready(fun() -> mnesia:dirty_update_counter(?TAB, ?KEY, 1) end).

when_ready(Fun) ->
    case erlang_web_status:get(storage, starting) of
        {ready, _} ->
            try
                {ok, Fun()}
            catch
                exit:_ -> {error, unavailable}
            end;
        _ ->
            {error, unavailable}
    end.

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    ok = erlang_web_status:set(storage, starting),
    self() ! setup,
    {ok, #state{mode = erlang_web_config:get(storage),
                dir = erlang_web_config:get(scratch_dir)}}.

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
handle_info(setup, #state{mode = Mode, dir = Dir} = State) ->
    case setup(Mode, Dir) of
        {ok, Kind} ->
            error_logger:info_msg("erlang_web: counter storage ready (~p~ts)~n",
                                  [Kind, case Kind of
                                             disc -> [" in ", Dir];
                                             ram -> ""
                                         end]),
            ok = erlang_web_status:set(storage, {ready, Kind});
        {error, Reason} ->
            Text = describe(Reason),
            error_logger:error_msg("erlang_web: counter storage failed: ~ts~n", [Text]),
            ok = erlang_web_status:set(storage, {failed, Text})
    end,
    {noreply, State};
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

setup(ram, _Dir) ->
    ram();
setup(disc, Dir) ->
    case writable(Dir) of
        true -> disc(Dir);
        false -> {error, {not_writable, Dir}}
    end;
setup(auto, Dir) ->
    case writable(Dir) of
        true -> disc(Dir);
        false -> ram()
    end.

ram() ->
    case mnesia:start() of
        ok -> table(ram_copies, ram);
        {error, Reason} -> {error, {mnesia_start, Reason}}
    end.

disc(Dir) ->
    case in_use(Dir) orelse restart_in(Dir) of
        true -> table(disc_copies, disc);
        {error, _} = Error -> Error
    end.

%% Whether mnesia already runs with its disc schema in Dir (say, after this process restarted).
in_use(Dir) ->
    mnesia:system_info(is_running) =:= yes
        andalso mnesia:system_info(use_dir) =:= true
        andalso filename:absname(mnesia:system_info(directory)) =:= filename:absname(Dir).

restart_in(Dir) ->
    case mnesia:stop() of
        stopped -> start_in(Dir);
        {error, Reason} -> {error, {mnesia_stop, Reason}}
    end.

start_in(Dir) ->
    ok = application:set_env(mnesia, dir, Dir),
    Schema = case mnesia:create_schema([node()]) of
                 ok -> ok;
                 {error, {_, {already_exists, _}}} -> ok;
                 {error, Reason} -> {error, {create_schema, Dir, Reason}}
             end,
    %% Start mnesia again even when the schema could not be made, so it is not left stopped.
    case {Schema, mnesia:start()} of
        {ok, ok} -> true;
        {ok, {error, Reason2}} -> {error, {mnesia_start, Reason2}};
        {Error, _} -> Error
    end.

table(Type, Kind) ->
    Create = mnesia:create_table(?TAB, [{attributes, [key, value]}, {Type, [node()]}]),
    case Create of
        {atomic, ok} -> wait(Kind);
        {aborted, {already_exists, ?TAB}} -> wait(Kind);
        {aborted, Reason} -> {error, {create_table, Reason}}
    end.

wait(Kind) ->
    case mnesia:wait_for_tables([?TAB], ?LOAD_TIMEOUT_MS) of
        ok -> {ok, Kind};
        {timeout, _} -> {error, {load_timeout, ?LOAD_TIMEOUT_MS}};
        {error, Reason} -> {error, {load, Reason}}
    end.

%% Whether Dir is an existing directory this node can create files in.
writable(Dir) ->
    Probe = filename:join(Dir, "erlang_web.probe"),
    case file:write_file(Probe, <<"probe">>) of
        ok ->
            _ = file:delete(Probe),
            true;
        {error, _} ->
            false
    end.

describe({not_writable, Dir}) ->
    unicode:characters_to_binary(
      io_lib:format("scratch_dir ~ts is not a writable directory", [Dir]));
describe(Reason) ->
    Text = unicode:characters_to_binary(io_lib:format("~w", [Reason])),
    case byte_size(Text) > 300 of
        true -> <<(binary:part(Text, 0, 300))/binary, "...">>;
        false -> Text
    end.
