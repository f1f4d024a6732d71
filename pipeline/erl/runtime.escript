#!/usr/bin/env escript
%% -*- erlang -*-
%% The OTP side of the trimmed runtime of the beam image, run with the toolchain's escript.
%%
%%   closure EBIN APP...   print "app NAME VSN DIR" for APP... and every application they need
%%                         (`applications' and `included_applications' of each .app file, followed
%%                         transitively); "missing NAME NEEDED_BY" and exit 2 if one is not found.
%%                         EBIN is added to the code path first (the compiled app's ebin).
%%   release ROOT VSN APP...
%%                         in the runtime tree ROOT (lib/NAME-VSN/ebin ...): write
%%                         releases/VSN/start.boot for a release of APP... (in start order) and
%%                         strip every beam of ROOT/lib to the chunks the loader needs.
-mode(compile).

main(["closure", Ebin | Apps]) ->
    true = code:add_patha(Ebin),
    closure([{list_to_atom(A), cli} || A <- Apps], []);
main(["release", Root, Vsn | Apps]) ->
    release(Root, Vsn, [list_to_atom(A) || A <- Apps]);
main(_) ->
    io:format(standard_error, "usage: runtime.escript closure EBIN APP... | release ROOT VSN APP...~n", []),
    halt(1).

closure([], Done) ->
    [io:format("app ~s ~s ~s~n", [A, V, D]) || {A, V, D} <- lists:reverse(Done)],
    halt(0);
closure([{App, NeededBy} | Rest], Done) ->
    case lists:keymember(App, 1, Done) of
        true ->
            closure(Rest, Done);
        false ->
            case code:where_is_file(atom_to_list(App) ++ ".app") of
                non_existing ->
                    io:format("missing ~s ~s~n", [App, NeededBy]),
                    halt(2);
                File ->
                    {ok, [{application, App, Props}]} = file:consult(File),
                    Vsn = proplists:get_value(vsn, Props),
                    Deps = proplists:get_value(applications, Props, [])
                        ++ proplists:get_value(included_applications, Props, []),
                    Dir = filename:dirname(filename:dirname(File)),
                    closure(Rest ++ [{D, App} || D <- Deps], [{App, Vsn, Dir} | Done])
            end
    end.

release(Root, Vsn, Apps) ->
    Lib = filename:join(Root, "lib"),
    Ebins = filelib:wildcard(filename:join([Lib, "*", "ebin"])),
    Versions = [{App, app_vsn(Ebins, App)} || App <- Apps],
    Erts = erlang:system_info(version),
    Rel = {release, {"image", Vsn}, {erts, Erts}, Versions},
    Dir = filename:join([Root, "releases", Vsn]),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    RelFile = filename:join(Dir, "start"),
    ok = file:write_file(RelFile ++ ".rel", io_lib:format("~p.~n", [Rel])),
    case systools:make_script(RelFile, [{path, Ebins}, {outdir, Dir}, no_dot_erlang, no_warn_sasl, silent]) of
        ok -> ok;
        {ok, _, []} -> ok;
        {ok, _, Warnings} -> io:format(standard_error, "~p~n", [Warnings]);
        Error ->
            io:format(standard_error, "make_script: ~p~n", [Error]),
            halt(3)
    end,
    ok = file:delete(RelFile ++ ".rel"),
    ok = file:delete(RelFile ++ ".script"),
    {ok, _} = beam_lib:strip_release(Root),
    halt(0).

app_vsn(Ebins, App) ->
    [File | _] = [F || E <- Ebins, F <- [filename:join(E, atom_to_list(App) ++ ".app")], filelib:is_file(F)],
    {ok, [{application, App, Props}]} = file:consult(File),
    proplists:get_value(vsn, Props).
