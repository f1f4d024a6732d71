#!/usr/bin/env escript
%% -*- erlang -*-
%% The Erlang side of reading a rebar3 project, run with the host's escript (Python cannot read
%% Erlang terms). Two commands:
%%
%%   facts PROFILE FILE...
%%       For each FILE (a rebar.config, a rebar.lock, an .app.src or .app file) print what the pipeline
%%       needs, one fact per line, tab-separated, prefixed with the file's index (0-based):
%%         I dep NAME pkg PKG VSN | I dep NAME git URL KIND REF | I dep NAME unsupported TERM
%%         I relx_release NAME VSN | I relx_opt KEY
%%         I lock NAME git URL SHA | I lock NAME pkg PKG VSN HASH
%%         I app NAME VSN | I needs APP
%%         I error MESSAGE
%%       A rebar.config is read as rebar3 reads it: with its rebar.config.script applied when there is
%%       one, and with PROFILE's deps and relx options merged over the base ones.
%%
%%   stage_config IN OUT SPEC
%%       Write the rebar.config the pipeline builds with: IN (with its .script applied) minus the
%%       dependencies SPEC names in {drop, [Name]} (they resolve to Erlang libraries installed on this
%%       machine, which relx takes from the code path), plus SPEC's {release, Name, Vsn, Apps} as the
%%       relx release when IN has none.
-mode(compile).

main(["facts", Profile | Files]) ->
    P = list_to_atom(Profile),
    lists:foldl(fun(File, I) -> facts(I, File, P), I + 1 end, 0, Files),
    halt(0);
main(["stage_config", In, Out, Spec]) ->
    case {config(In), file:consult(Spec)} of
        {{ok, Terms}, {ok, SpecTerms}} ->
            Drop = proplists:get_value(drop, SpecTerms, []),
            Terms1 = drop_deps(Terms, Drop),
            Terms2 = case {proplists:get_value(relx, Terms1), lists:keyfind(release, 1, SpecTerms)} of
                         {undefined, {release, Name, Vsn, Apps}} ->
                             %% no vm.args or sys.config of relx's own making (its default
                             %% vm.args names the node): the app's come from its templates
                             Terms1 ++ [{relx, [{release, {Name, Vsn}, Apps}, {vm_args, false},
                                                {sys_config, false}]}];
                         _ -> Terms1
                     end,
            Text = ["%% coding: utf-8\n" | [io_lib:format("~tp.~n", [T]) || T <- Terms2]],
            ok = file:write_file(Out, unicode:characters_to_binary(Text)),
            halt(0);
        {{error, Msg}, _} ->
            io:format(standard_error, "~ts~n", [Msg]),
            halt(1);
        {_, {error, Reason}} ->
            io:format(standard_error, "~s: ~p~n", [Spec, Reason]),
            halt(1)
    end;
main(_) ->
    io:format(standard_error, "usage: project.escript facts PROFILE FILE... | stage_config IN OUT SPEC~n", []),
    halt(2).

facts(I, File, Profile) ->
    Base = filename:basename(File),
    Result = case lists:suffix("rebar.lock", Base) of
                 true -> lock(I, File);
                 false when Base =:= "metadata.config" -> hex_metadata(I, File);
                 false ->
                     case lists:suffix(".app.src", Base) orelse lists:suffix(".app", Base) of
                         true -> app(I, File);
                         false -> rebar_config(I, File, Profile)
                     end
             end,
    case Result of
        ok -> ok;
        {error, Msg} -> out(I, ["error", Msg])
    end.

%% -- rebar.config ------------------------------------------------------------------------------------

rebar_config(I, File, Profile) ->
    case config(File) of
        {ok, Terms} ->
            ProfileTerms = proplists:get_value(Profile, proplists:get_value(profiles, Terms, []), []),
            Deps = merge_deps(proplists:get_value(deps, Terms, []), proplists:get_value(deps, ProfileTerms, [])),
            [dep(I, D) || D <- Deps],
            Relx = proplists:get_value(relx, ProfileTerms, []) ++ proplists:get_value(relx, Terms, []),
            case [R || R <- Relx, is_tuple(R), element(1, R) =:= release] of
                [{release, {Name, Vsn}, _} | _] -> out(I, ["relx_release", atom_to_list(Name), vsn(Vsn)]);
                _ -> ok
            end,
            [out(I, ["relx_opt", atom_to_list(K)]) || K <- [sys_config_src, vm_args_src],
                                                      lists:keymember(K, 1, Relx)],
            ok;
        {error, Msg} -> {error, Msg}
    end.

%% A profile's deps replace the base's of the same name (rebar3 merges them by name).
merge_deps(Base, Profile) ->
    Names = [dep_name(D) || D <- Profile],
    [D || D <- Base, not lists:member(dep_name(D), Names)] ++ Profile.

dep_name(D) when is_atom(D) -> D;
dep_name(D) when is_tuple(D) -> element(1, D).

dep(I, Name) when is_atom(Name) -> out(I, ["dep", a(Name), "pkg", a(Name), ""]);
dep(I, {Name, Vsn}) when is_list(Vsn) -> out(I, ["dep", a(Name), "pkg", a(Name), Vsn]);
dep(I, {Name, Vsn}) when is_binary(Vsn) -> out(I, ["dep", a(Name), "pkg", a(Name), binary_to_list(Vsn)]);
dep(I, {Name, {pkg, Pkg}}) -> out(I, ["dep", a(Name), "pkg", a(Pkg), ""]);
dep(I, {Name, Vsn, {pkg, Pkg}}) when is_list(Vsn) -> out(I, ["dep", a(Name), "pkg", a(Pkg), Vsn]);
dep(I, {Name, {git, Url}}) -> out(I, ["dep", a(Name), "git", Url, "branch", "HEAD"]);
dep(I, {Name, {git, Url, Ref}}) -> git(I, Name, Url, Ref);
dep(I, {Name, {git, Url, Ref}, _Opts}) -> git(I, Name, Url, Ref);
dep(I, {Name, _Vsn, {git, Url, Ref}}) -> git(I, Name, Url, Ref);
dep(I, {Name, _Vsn, {git, Url, Ref}, _Opts}) -> git(I, Name, Url, Ref);
dep(I, Other) -> out(I, ["dep", a(dep_name(Other)), "unsupported", io_lib:format("~0p", [Other])]).

git(I, Name, Url, {Kind, Ref}) when Kind =:= branch; Kind =:= tag; Kind =:= ref ->
    out(I, ["dep", a(Name), "git", Url, atom_to_list(Kind), Ref]);
git(I, Name, Url, Ref) when is_list(Ref) -> out(I, ["dep", a(Name), "git", Url, "rev", Ref]);
git(I, Name, Url, _) -> out(I, ["dep", a(Name), "git", Url, "branch", "HEAD"]).

%% rebar.config, with rebar.config.script applied as rebar3 does (CONFIG and SCRIPT bound).
config(File) ->
    case file:consult(File) of
        {ok, Terms} ->
            Script = File ++ ".script",
            case filelib:is_regular(Script) of
                false -> {ok, Terms};
                true ->
                    Bindings = erl_eval:add_binding('SCRIPT', Script,
                                                    erl_eval:add_binding('CONFIG', Terms, erl_eval:new_bindings())),
                    case file:script(Script, Bindings) of
                        {ok, Result} when is_list(Result) -> {ok, Result};
                        {ok, Other} -> {error, io_lib:format("~s: returned ~0p, not a list of terms", [Script, Other])};
                        {error, Reason} -> {error, format_error(Script, Reason)}
                    end
            end;
        {error, Reason} -> {error, format_error(File, Reason)}
    end.

%% -- rebar.lock ----------------------------------------------------------------------------------

lock(I, File) ->
    case file:consult(File) of
        {ok, [{_Vsn, Locks} | Rest]} when is_list(Locks) -> locks(I, Locks, hashes(Rest));
        {ok, [Locks]} when is_list(Locks) -> locks(I, Locks, []);
        {ok, []} -> ok;
        {ok, _} -> {error, File ++ ": not a rebar3 lock file"};
        {error, Reason} -> {error, format_error(File, Reason)}
    end.

hashes([Attrs | _]) when is_list(Attrs) -> proplists:get_value(pkg_hash_ext, Attrs, proplists:get_value(pkg_hash, Attrs, []));
hashes(_) -> [].

locks(I, Locks, Hashes) ->
    lists:foreach(
      fun({Name, {git, Url, {ref, Sha}}, _Level}) ->
              out(I, ["lock", s(Name), "git", s(Url), s(Sha)]);
         ({Name, {pkg, Pkg, Vsn}, _Level}) ->
              Hash = proplists:get_value(Name, Hashes, <<>>),
              out(I, ["lock", s(Name), "pkg", s(Pkg), s(Vsn), s(Hash)]);
         ({Name, {pkg, Pkg, Vsn, _Hash}, _Level}) ->
              Hash = proplists:get_value(Name, Hashes, <<>>),
              out(I, ["lock", s(Name), "pkg", s(Pkg), s(Vsn), s(Hash)]);
         (_) -> ok
      end, Locks).

%% -- a hex package's metadata.config (hex tarball format 3) -----------------------------------------

hex_metadata(I, File) ->
    case file:consult(File) of
        {ok, Terms} ->
            Get = fun(K) -> proplists:get_value(K, Terms) end,
            case {Get(<<"app">>), Get(<<"version">>)} of
                {Name, Version} when is_binary(Name), is_binary(Version) ->
                    out(I, ["app", s(Name), s(Version)]);
                _ -> ok
            end,
            Reqs = case Get(<<"requirements">>) of
                       M when is_map(M) -> maps:to_list(M);
                       L when is_list(L) -> L;
                       _ -> []
                   end,
            lists:foreach(
              fun({Pkg, Req}) ->
                      Props = case Req of M2 when is_map(M2) -> maps:to_list(M2); L2 -> L2 end,
                      App = proplists:get_value(<<"app">>, Props, Pkg),
                      Optional = proplists:get_value(<<"optional">>, Props, false),
                      Vsn = proplists:get_value(<<"requirement">>, Props, <<>>),
                      case Optional of
                          true -> ok;
                          _ -> out(I, ["dep", s(App), "pkg", s(Pkg), s(Vsn)])
                      end
              end, Reqs),
            ok;
        {error, Reason} -> {error, format_error(File, Reason)}
    end.

%% -- .app.src / .app -----------------------------------------------------------------------------

app(I, File) ->
    case file:consult(File) of
        {ok, [{application, Name, Props}]} when is_atom(Name), is_list(Props) ->
            out(I, ["app", atom_to_list(Name), vsn(proplists:get_value(vsn, Props))]),
            Needs = proplists:get_value(applications, Props, [])
                ++ proplists:get_value(included_applications, Props, []),
            [out(I, ["needs", a(A)]) || A <- Needs, is_atom(A)],
            ok;
        {ok, _} -> {error, File ++ ": expected one {application, Name, Properties} term"};
        {error, Reason} -> {error, format_error(File, Reason)}
    end.

vsn(V) when is_list(V) -> V;
vsn(V) when is_binary(V) -> binary_to_list(V);
vsn(git) -> "git";
vsn(semver) -> "git";
vsn({git, _}) -> "git";
vsn(V) -> io_lib:format("~0p", [V]).

%% -- staging -------------------------------------------------------------------------------------

drop_deps(Terms, []) -> Terms;
drop_deps(Terms, Drop) ->
    Keep = fun(D) -> not lists:member(dep_name(D), Drop) end,
    lists:map(
      fun({deps, Deps}) -> {deps, lists:filter(Keep, Deps)};
         ({profiles, Profiles}) ->
              {profiles, [{P, [case T of {deps, Ds} -> {deps, lists:filter(Keep, Ds)}; _ -> T end || T <- Ts]}
                          || {P, Ts} <- Profiles]};
         (T) -> T
      end, Terms).

%% -- output --------------------------------------------------------------------------------------

out(I, Fields) ->
    Clean = [[case C of $\t -> $\s; $\n -> $\s; _ -> C end || C <- lists:flatten(io_lib:format("~ts", [F]))]
             || F <- Fields],
    io:format("~b\t~ts~n", [I, string:join(Clean, "\t")]).

format_error(File, {Line, Mod, Term}) -> io_lib:format("~s:~p: ~ts", [File, Line, Mod:format_error(Term)]);
format_error(File, Reason) -> io_lib:format("~s: ~ts", [File, file:format_error(Reason)]).

a(A) when is_atom(A) -> atom_to_list(A);
a(A) -> s(A).

s(B) when is_binary(B) -> unicode:characters_to_list(B);
s(A) when is_atom(A) -> atom_to_list(A);
s(L) when is_list(L) -> L.
