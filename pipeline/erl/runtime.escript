#!/usr/bin/env escript
%% -*- erlang -*-
%% The OTP side of the trimmed runtime of the images, run with the toolchain's escript. Runs on every
%% OTP release from 17 on (the ling target runs `closure' with OTP 17): no maps, no logger.
%%
%%   closure EBIN APP...   print "app NAME VSN DIR" for APP... and every application they need
%%                         (`applications' and `included_applications' of each .app file, followed
%%                         transitively); "missing NAME NEEDED_BY" and exit 2 if one is not found.
%%                         EBIN (a directory, or several joined with ":") is added to the code path
%%                         first.
%%   inspect RELDIR NAME VSN
%%                         what a release directory holds: "release NAME VSN ERTS" and "app NAME VSN"
%%                         from releases/VSN/NAME.rel, "boot FILE" (its boot script) and "path DIR"
%%                         for each code path directory the boot script sets, "erts VSN" for each
%%                         erts-VSN it ships. "error MESSAGE" when something is missing.
%%   finish ROOT NAME VSN ERTS
%%                         in the image's runtime tree ROOT: write releases/start_erl.data and
%%                         releases/RELEASES (paths as the image has them), strip every beam under
%%                         ROOT/lib to the chunks the loader needs.
%%   config OUT RENDERED [BASE]
%%                         check RENDERED is a sys.config (one list of {App, [{Key, Value}]} or file
%%                         names); with BASE (the release's own sys.config), merge RENDERED's
%%                         parameters over BASE's; write the result to OUT.
-mode(compile).

main(["closure", Ebins | Apps]) ->
    ok = code:add_pathsa(string:tokens(Ebins, ":")),
    closure([{list_to_atom(A), cli} || A <- Apps], []);
main(["inspect", Dir, Name, Vsn]) ->
    inspect(Dir, Name, Vsn);
main(["finish", Root, Name, Vsn, Erts]) ->
    finish(Root, Name, Vsn, Erts);
main(["config", Out, Rendered]) ->
    config(Out, Rendered, none);
main(["config", Out, Rendered, Base]) ->
    config(Out, Rendered, Base);
main(_) ->
    io:format(standard_error, "usage: runtime.escript closure|inspect|finish|config ...~n", []),
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

%% -- a release directory ----------------------------------------------------------------------

inspect(Dir, Name, Vsn) ->
    RelDir = filename:join([Dir, "releases", Vsn]),
    RelFile = filename:join(RelDir, Name ++ ".rel"),
    case file:consult(RelFile) of
        {ok, [{release, {RName, RVsn}, {erts, Erts}, Apps}]} ->
            io:format("release ~s ~s ~s~n", [RName, RVsn, Erts]),
            [io:format("app ~s ~s~n", [element(1, A), element(2, A)]) || A <- Apps];
        {ok, _} ->
            fail(RelFile ++ ": not a release resource file ({release, {Name, Vsn}, {erts, Vsn}, Apps})");
        {error, Reason} ->
            fail(RelFile ++ ": " ++ file:format_error(Reason))
    end,
    Boots = [F || F <- [filename:join(RelDir, "start.boot"), filename:join(RelDir, Name ++ ".boot")],
                  filelib:is_regular(F)],
    case Boots of
        [] -> fail(RelDir ++ ": no boot script (start.boot or " ++ Name ++ ".boot)");
        [Boot | _] ->
            {ok, Bin} = file:read_file(Boot),
            case catch binary_to_term(Bin) of
                {script, _, Instructions} ->
                    io:format("boot ~s~n", [Boot]),
                    [io:format("path ~s~n", [P]) || {path, Ps} <- Instructions, P <- Ps];
                _ -> fail(Boot ++ ": not a boot script")
            end
    end,
    [io:format("erts ~s~n", [string:substr(filename:basename(E), 6)])
     || E <- filelib:wildcard(filename:join(Dir, "erts-*")), filelib:is_dir(E)],
    halt(0).

finish(Root, Name, Vsn, Erts) ->
    Releases = filename:join(Root, "releases"),
    {ok, [{release, _, _, Apps}]} = file:consult(filename:join([Releases, Vsn, Name ++ ".rel"])),
    ok = file:write_file(filename:join(Releases, "start_erl.data"), [Erts, " ", Vsn, "\n"]),
    %% The format release_handler reads (and writes in release_handler:create_RELEASES/4), with the
    %% library paths as they are in the image rather than where the release was built.
    Libs = [{element(1, A), element(2, A),
             "/" ++ filename:join(["opt", "erlang", "lib", atom_to_list(element(1, A)) ++ "-" ++ element(2, A)])}
            || A <- Apps],
    Rel = {release, Name, Vsn, Erts, Libs, permanent},
    ok = file:write_file(filename:join(Releases, "RELEASES"), io_lib:format("~p.~n", [[Rel]])),
    Beams = filelib:wildcard(filename:join([Root, "lib", "*", "**", "*.beam"])),
    lists:foreach(fun strip/1, lists:sort(Beams)),
    halt(0).

%% Strip one beam to the chunks the loader needs; a beam this release's beam_lib cannot read (from
%% a newer OTP, in a release that ships its own erts) is left as it is.
strip(Beam) ->
    case catch beam_lib:strip(Beam) of
        {ok, _} -> ok;
        _ -> ok
    end.

%% -- sys.config ---------------------------------------------------------------------------------

config(Out, Rendered, Base) ->
    Overlay = read_config(Rendered),
    Result = case Base of
                 none -> Overlay;
                 _ -> merge(read_config(Base), Overlay)
             end,
    Text = case Base of
               none ->
                   {ok, Bin} = file:read_file(Rendered),
                   Bin;
               _ -> ["%% coding: utf-8\n", io_lib:format("~tp.~n", [Result])]
           end,
    ok = file:write_file(Out, Text),
    halt(0).

read_config(File) ->
    case file:consult(File) of
        {ok, [Terms]} when is_list(Terms) ->
            case [T || T <- Terms, not is_entry(T)] of
                [] -> Terms;
                [Bad | _] -> fail(io_lib:format("~s: ~P is not {Application, [{Key, Value}]} or a file name",
                                                [File, Bad, 8]))
            end;
        {ok, _} -> fail(File ++ ": a sys.config holds one list, ending with a full stop");
        {error, {Line, Mod, Term}} -> fail(io_lib:format("~s:~p: ~ts", [File, Line, Mod:format_error(Term)]));
        {error, Reason} -> fail(File ++ ": " ++ file:format_error(Reason))
    end.

is_entry({App, Env}) when is_atom(App), is_list(Env) -> lists:all(fun(P) -> is_tuple(P) andalso size(P) =:= 2 end, Env);
is_entry(File) -> io_lib:printable_unicode_list(File).

%% Parameters of Overlay replace Base's of the same application and key; the rest is kept in order.
merge(Base, Overlay) ->
    lists:foldl(
      fun({App, Env}, Acc) ->
              case lists:keyfind(App, 1, Acc) of
                  {App, Old} ->
                      New = lists:foldl(fun({K, V}, E) -> lists:keystore(K, 1, E, {K, V}) end, Old, Env),
                      lists:keystore(App, 1, Acc, {App, New});
                  false -> Acc ++ [{App, Env}]
              end;
         (File, Acc) -> Acc ++ [File]
      end, Base, Overlay).

fail(Message) ->
    io:format("error ~ts~n", [lists:flatten(Message)]),
    halt(3).
