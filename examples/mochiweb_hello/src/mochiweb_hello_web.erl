%% The HTTP answers: the baked message, a health check and the build this image was made from.
-module(mochiweb_hello_web).
-export([loop/1]).

loop(Req) ->
    case mochiweb_request:get(path, Req) of
        "/" -> text(Req, 200, env(message));
        "/health" -> text(Req, 200, <<"ok">>);
        "/build" -> text(Req, 200, env(build_id));
        _ -> text(Req, 404, <<"not found">>)
    end.

text(Req, Status, Body) ->
    mochiweb_request:respond({Status, [{"Content-Type", "text/plain; charset=utf-8"}], Body}, Req).

env(Key) ->
    {ok, Value} = application:get_env(mochiweb_hello, Key),
    Value.
