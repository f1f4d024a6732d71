%% @doc GET /health : 200 once the listener and the counter storage are both up, else 503.
%%
%% 200 `{"status":"ok","storage":"disc"|"ram"}'
%% 503 `{"status":"starting","listener":L,"storage":S}' while either is still starting,
%%     `{"status":"storage_failed","listener":L,"storage":"failed","reason":R}' when the storage
%%     could not be set up (it will not recover without a new instance),
%%     `{"status":"draining","listener":"draining","storage":S}' while the node shuts down.
-module(erlang_web_health_h).

%% Implements the erlang_web_handler callbacks. (No -behaviour attribute: compiled one file
%% at a time without the output directory on the code path, the compiler could not find it.)

-export([allowed_methods/0]).
-export([handle/2]).
-export([health/2]).

%% @doc GET (and so HEAD).
-spec allowed_methods() -> [get, ...].
allowed_methods() ->
    [get].

%% @doc The health of this node as JSON.
-spec handle(get, binary()) -> erlang_web_handler:response().
handle(get, _Body) ->
    {Status, Json} = health(erlang_web_status:get(listener, starting),
                            erlang_web_status:get(storage, starting)),
    {Status, <<"application/json">>, erlang_web_json:encode(Json)}.

%% @doc Status code and JSON body for a listener and storage status.
-spec health(erlang_web_status:listener(), erlang_web_status:storage()) ->
          {200 | 503, erlang_web_json:json()}.
health(up, {ready, Kind}) ->
    {200, {[{status, ok}, {storage, Kind}]}};
health(Listener, {failed, Reason}) ->
    {503, {[{status, storage_failed}, {listener, Listener}, {storage, failed},
            {reason, Reason}]}};
health(draining, Storage) ->
    {503, {[{status, draining}, {listener, draining}, {storage, storage(Storage)}]}};
health(Listener, Storage) ->
    {503, {[{status, starting}, {listener, Listener}, {storage, storage(Storage)}]}}.

storage({ready, Kind}) -> Kind;
storage(starting) -> starting.
