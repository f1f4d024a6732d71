#!/usr/bin/env escript
%% Compile OTP applications from their rebar3 layout into OUT/<app>-<vsn>/ebin.
%%
%% Usage: escript build_app.escript APP_DIR OUT_DIR
%%        escript build_app.escript multi OUT_DIR APP_DIR...   (in dependency order)
%%
%% Compiles src/**/*.erl (subdirectories too, as rebar3 does) with the erl_opts of
%% APP_DIR/rebar.config plus `deterministic` (no paths or times in the beams, so equal sources give
%% equal bytes), writes <app>.app from src/<app>.app.src with the module list filled in, copies
%% include/ next to ebin/ (for the -include_lib of the applications compiled after it, which also find
%% its behaviours and parse transforms on the code path), and prints a summary the pipeline parses,
%% one fact per line, per application:
%%   app NAME VSN | applications A.. | modules M.. | nif MODULE | driver MODULE | otp RELEASE
%% Compiler errors are printed as FILE:LINE: message and the script exits 1.
%%
%% Runs on every OTP release from 17 on (the ling target compiles with OTP 17), so it uses no maps,
%% no logger and nothing else newer than OTP 17.
-mode(compile).

main([AppDir, OutDir]) ->
    run(fun() -> build(AppDir, OutDir) end);
main(["multi", OutDir | AppDirs]) ->
    run(fun() -> lists:foreach(fun(AppDir) -> ok = build(AppDir, OutDir) end, AppDirs) end);
main(_) ->
    io:format(standard_error, "usage: build_app.escript APP_DIR OUT_DIR | multi OUT_DIR APP_DIR...~n", []),
    halt(2).

run(Fun) ->
    case catch Fun() of
        ok -> halt(0);
        {error, Msg} ->
            io:format(standard_error, "~s~n", [Msg]),
            halt(1);
        Other ->
            io:format(standard_error, "build_app: ~p~n", [Other]),
            halt(2)
    end.

build(AppDir, OutDir) ->
    {Name, Props} = read_app_src(AppDir),
    Vsn = vsn(Name, Props),
    Ebin = filename:join([OutDir, atom_to_list(Name) ++ "-" ++ Vsn, "ebin"]),
    ok = filelib:ensure_dir(filename:join(Ebin, "x")),
    Opts = erl_opts(AppDir) ++
        [deterministic, return_errors, return_warnings, {outdir, Ebin},
         {i, filename:join(AppDir, "include")}, {i, filename:join(AppDir, "src")}],
    copy_include(AppDir, filename:dirname(Ebin)),
    Sources = lists:sort(filelib:wildcard(filename:join([AppDir, "src", "**", "*.erl"]))),
    %% Behaviours and parse transforms of the app must be compiled (and loadable) before the modules
    %% that use them, as rebar3 does: compile modules that define callbacks or transforms first.
    true = code:add_patha(Ebin),
    {First, Rest} = lists:partition(fun is_prerequisite/1, Sources),
    Mods = lists:sort([compile_one(Src, Opts) || Src <- First ++ Rest]),
    AppFile = filename:join(Ebin, atom_to_list(Name) ++ ".app"),
    Props1 = lists:keystore(modules, 1, Props, {modules, Mods}),
    ok = file:write_file(AppFile, io_lib:format("~p.~n", [{application, Name, Props1}])),
    Apps = proplists:get_value(applications, Props, []),
    io:format("app ~s ~s~n", [Name, Vsn]),
    io:format("applications~s~n", [[[" ", atom_to_list(A)] || A <- Apps]]),
    io:format("modules~s~n", [[[" ", atom_to_list(M)] || M <- Mods]]),
    [io:format("~s ~s~n", [Kind, M]) || M <- Mods,
                                        Kind <- native(filename:join(Ebin, atom_to_list(M) ++ ".beam"))],
    io:format("otp ~s~n", [erlang:system_info(otp_release)]),
    ok.

read_app_src(AppDir) ->
    case filelib:wildcard(filename:join([AppDir, "src", "*.app.src"])) of
        [File] ->
            case file:consult(File) of
                {ok, [{application, Name, Props}]} when is_atom(Name), is_list(Props) ->
                    {Name, Props};
                {ok, _} ->
                    throw({error, File ++ ": expected one {application, Name, Props} term"});
                {error, {Line, Mod, Term}} ->
                    throw({error, io_lib:format("~s:~p: ~s", [File, Line, Mod:format_error(Term)])});
                {error, Reason} ->
                    throw({error, io_lib:format("~s: ~s", [File, file:format_error(Reason)])})
            end;
        [] ->
            throw({error, AppDir ++ "/src: no .app.src file"});
        Many ->
            throw({error, io_lib:format("~s/src: more than one .app.src file: ~p", [AppDir, Many])})
    end.

vsn(Name, Props) ->
    case proplists:get_value(vsn, Props) of
        V when is_list(V), V =/= [] -> V;
        Other ->
            throw({error, io_lib:format("~s.app.src: vsn must be a literal string, got ~p", [Name, Other])})
    end.

erl_opts(AppDir) ->
    Config = filename:join(AppDir, "rebar.config"),
    case filelib:is_regular(Config) of
        false -> [];
        true ->
            case file:consult(Config) of
                {ok, Terms} -> proplists:get_value(erl_opts, Terms, []);
                {error, {Line, Mod, Term}} ->
                    throw({error, io_lib:format("~s:~p: ~s", [Config, Line, Mod:format_error(Term)])});
                {error, Reason} ->
                    throw({error, io_lib:format("~s: ~s", [Config, file:format_error(Reason)])})
            end
    end.

%% Diagnostics are printed here, with the path as given, because `deterministic` makes the compiler's
%% own reports name only the file's basename.
compile_one(Src, Opts) ->
    case compile:file(Src, Opts) of
        {ok, Mod, Warnings} ->
            print(Src, "Warning: ", Warnings),
            Mod;
        {error, Errors, Warnings} ->
            print(Src, "", Errors),
            %% with warnings_as_errors the failure is the warnings themselves
            print(Src, case Errors of [] -> ""; _ -> "Warning: " end, Warnings),
            throw({error, "compilation failed: " ++ Src})
    end.

print(Src, Prefix, FileDiags) ->
    [io:format("~s:~s: ~s~s~n", [Src, loc(Loc), Prefix, Mod:format_error(Desc)])
     || {_File, Diags} <- FileDiags, {Loc, Mod, Desc} <- Diags],
    ok.

loc({Line, Col}) -> io_lib:format("~p:~p", [Line, Col]);
loc(Line) when is_integer(Line) -> integer_to_list(Line);
loc(_) -> "0".

is_prerequisite(Src) ->
    {ok, Text} = file:read_file(Src),
    binary:match(Text, [<<"\n-callback">>, <<"parse_transform(">>]) =/= nomatch.

%% Native code a module loads: a NIF library (erlang:load_nif/2) or a port driver (erl_ddll).
native(Beam) ->
    case beam_lib:chunks(Beam, [imports]) of
        {ok, {_, [{imports, Imports}]}} ->
            [nif || lists:member({erlang, load_nif, 2}, Imports)]
                ++ [driver || lists:any(fun(F) -> lists:member(F, Imports) end,
                                       [{erl_ddll, load_driver, 2}, {erl_ddll, load, 2}])];
        _ -> []
    end.

copy_include(AppDir, Dest) ->
    Files = [F || F <- filelib:wildcard(filename:join([AppDir, "include", "**", "*"])), filelib:is_regular(F)],
    lists:foreach(
      fun(F) ->
              Rel = lists:nthtail(length(filename:join(AppDir, "include")) + 1, F),
              To = filename:join([Dest, "include", Rel]),
              ok = filelib:ensure_dir(To),
              {ok, _} = file:copy(F, To)
      end, Files).
