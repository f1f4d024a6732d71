#!/usr/bin/env escript
%% The external calls in beams, for the OTP 17 API check (tests/otp17/__init__.py).
%%
%% Usage: escript calls.escript BEAM...
%% Prints one tab-separated line per call: Caller, File, Line, Module, Function, Arity, App, Source,
%% where File is the file the call is in as the compiler named it, Source the beam's source file as its
%% compile info records it ("-" when it does not: `deterministic`), and
%% App the application of the running OTP that holds Module (kernel, stdlib, mnesia, inets, erts
%% for preloaded modules, other, or none when no application has it). Calls are read from the debug
%% info (remote calls, `fun M:F/A`, and calls of auto-imported BIFs, which are erlang:F/A); a beam
%% without debug info gives its import table, with File "-" and Line 0.
-mode(compile).

main(Beams) ->
    [calls(B) || B <- Beams],
    ok.

calls(Beam) ->
    put(source, source(Beam)),
    case forms(Beam) of
        {ok, Mod, Forms} ->
            Defined = [{F, A} || {function, _, F, A, _} <- Forms],
            Imported = [{{F, A}, M} || {attribute, _, import, {M, FAs}} <- Forms, {F, A} <- FAs],
            walk_forms(Forms, Mod, "-", Defined, Imported);
        {imports, Mod, Imports} ->
            [print(Mod, "-", 0, M, F, A) || {M, F, A} <- Imports]
    end.

source(Beam) ->
    case beam_lib:chunks(Beam, [compile_info]) of
        {ok, {_, [{compile_info, Info}]}} -> proplists:get_value(source, Info, "-");
        _ -> "-"
    end.

forms(Beam) ->
    {ok, {Mod, [{imports, Imports}]}} = beam_lib:chunks(Beam, [imports]),
    case beam_lib:chunks(Beam, [debug_info]) of
        {ok, {Mod, [{debug_info, {debug_info_v1, Backend, Meta}}]}} ->
            case Backend:debug_info(erlang_v1, Mod, Meta, []) of
                {ok, Forms} -> {ok, Mod, Forms};
                _ -> {imports, Mod, Imports}
            end;
        _ -> {imports, Mod, Imports}
    end.

%% Forms come in order; a file attribute says which file the following ones are from.
walk_forms([], _, _, _, _) -> ok;
walk_forms([{attribute, _, file, {File, _}} | Rest], Mod, _, Defined, Imported) ->
    walk_forms(Rest, Mod, File, Defined, Imported);
walk_forms([{function, _, _, _, Clauses} | Rest], Mod, File, Defined, Imported) ->
    walk(Clauses, Mod, File, Defined, Imported),
    walk_forms(Rest, Mod, File, Defined, Imported);
walk_forms([_ | Rest], Mod, File, Defined, Imported) ->
    walk_forms(Rest, Mod, File, Defined, Imported).

walk({call, Anno, {remote, _, {atom, _, M}, {atom, _, F}}, Args} = _, Mod, File, D, I) ->
    print(Mod, File, line(Anno), M, F, length(Args)),
    walk(Args, Mod, File, D, I);
walk({call, Anno, {atom, _, F}, Args}, Mod, File, D, I) ->
    N = length(Args),
    case {lists:member({F, N}, D), lists:keyfind({F, N}, 1, I)} of
        {true, _} -> ok;
        {false, {_, M}} -> print(Mod, File, line(Anno), M, F, N);
        {false, false} ->
            case erl_internal:bif(F, N) of
                true -> print(Mod, File, line(Anno), erlang, F, N);
                false -> ok
            end
    end,
    walk(Args, Mod, File, D, I);
walk({'fun', Anno, {function, {atom, _, M}, {atom, _, F}, {integer, _, A}}}, Mod, File, _, _) ->
    print(Mod, File, line(Anno), M, F, A);
walk(T, Mod, File, D, I) when is_tuple(T) ->
    walk(tuple_to_list(T), Mod, File, D, I);
walk(L, Mod, File, D, I) when is_list(L) ->
    [walk(X, Mod, File, D, I) || X <- L],
    ok;
walk(_, _, _, _, _) ->
    ok.

line(Anno) -> erl_anno:line(Anno).

print(Caller, File, Line, M, F, A) ->
    io:format("~s\t~ts\t~b\t~s\t~s\t~b\t~s\t~ts~n", [Caller, File, Line, M, F, A, app(M), get(source)]).

app(M) ->
    case code:which(M) of
        preloaded -> erts;
        non_existing -> none;
        Path when is_list(Path) ->
            Apps = [App || App <- [kernel, stdlib, mnesia, inets],
                           is_list(code:lib_dir(App)),
                           lists:prefix(code:lib_dir(App) ++ "/", Path)],
            case Apps of [App | _] -> App; [] -> other end;
        _ -> other
    end.
