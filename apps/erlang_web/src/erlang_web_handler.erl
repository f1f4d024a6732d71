%% @doc The behaviour of request handlers (`*_h' modules).
%%
%% The connection process routes a request to a handler (see erlang_web_router), answers 405 for
%% methods the handler does not list, and calls it for the rest. HEAD is answered by calling the
%% handler with `get' and leaving the body out, so handlers never see HEAD.
-module(erlang_web_handler).

-export_type([response/0]).

%% Status, Content-Type, body.
-type response() :: {pos_integer(), binary(), iodata()}.

%% The methods the resource accepts (HEAD is implied by get).
-callback allowed_methods() -> [get | post, ...].

%% Answer a request; Body is the request body (empty for GET).
-callback handle(get | post, Body :: binary()) -> response().
