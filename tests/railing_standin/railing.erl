#!/usr/bin/env escript
%% -*- erlang -*-
%% TEST DOUBLE: a stand-in for LING's `railing` (Erlang on Xen, cloudozer/ling, railing/railing.erl),
%% which cannot exist on the test machines (it needs LING's prebuilt core, vmling.o, built with OTP 17).
%% Used only by the pipeline's tests; the pipeline calls it exactly as it calls the real railing.
%%
%% What it follows, as documented by LING's sources:
%% - the command line: `railing image [-l LIB]... [-i DIR]... [-x PREFIX]... [-n NAME] [-d FILE]
%%   [-m MB] [-e EXTRA]... [-v] [-h]` (long forms --lib --include --exclude --name --domain --memory
%%   --extra --version --help, also --opt=VALUE and -oVALUE); `-v` prints
%%   "LING v<version> (railing build for xen)"; it refuses an Erlang/OTP release below 17.
%% - the files: `**/ebin/*.{app,beam}` under the current directory plus every file under each `-i`
%%   directory, minus `-x` prefixes and `.railing`; the libraries kernel, stdlib and each `-l` from the
%%   running Erlang's code:lib_dir/1; a `boot` bucket with `local.map` and the running Erlang's
%%   bin/start.boot.
%% - the embedded file system `.railing/embed.fs` (big-endian: <<Buckets:32, Files:32>>, per bucket
%%   <<NameLen:8, Name, Count:32>>, per file <<NameLen:8, Name, Size:32, Data>>), buckets named and
%%   mounted as railing does (project dir `a/ebin` -> bucket `a`, `ebin` -> `top`, mounted at
%%   /<project>/<dir>; libs at /erlang/lib/<lib-vsn>/ebin).
%% - linking: `objcopy -I binary -O elf64-little --alt-machine-code 62 --rename-section
%%   .data=.rodata,...` turns embed.fs into embedfs.o (symbol _binary_embed_fs_start), then
%%   `ld -T ling.lds -nostdlib vmling.o embedfs.o -o ../<name>.img` in .railing/.
%% - the Xen domain config file (`domain_config` or -d): name, kernel, extra (the -e extras, then
%%   "-home /<project> -pz /<project>/<dir>..."), memory (if -m), vif; refused when extra would
%%   reach 1024 characters.
%%
%% Where it differs (it cannot do what only LING's core can):
%% - vmling.o is not LING's VM: it is assembled here from a few lines with `as`, holding the same
%%   `__xen_guest` string as LING's startup.S and a `_start` that halts. The image does not boot.
%% - Beams are not translated to LING code. Each <module>.ling is LING's container format
%%   ("FOR1" Size "LING" + chunks) with only the `Atom` chunk (the module's atoms, sorted) and the
%%   `ExpT` chunk (its exports), read from the beam.
%%
%% Test hooks (environment): RAILING_STANDIN_LOG=FILE appends each call's arguments and working
%% directory to FILE as a JSON line; RAILING_STANDIN_FAIL=after-embedfs stops with an error after
%% writing embed.fs (a railing failing mid-way).
-mode(compile).

-define(VERSION, "0.5.0-standin").
-define(OTP_VER, "17").
-define(CACHE, ".railing").

main(Args) ->
    log_call(Args),
    case erlang:system_info(otp_release) of
        Otp when ?OTP_VER =< Otp -> ok;
        Otp ->
            io:format("Error: incompatible Erlang/OTP version: required ~s, found ~s~n", [?OTP_VER, Otp]),
            halt(1)
    end,
    {Opts, Cmds} = parse(Args, [], []),
    case lists:member(version, Opts) of
        true ->
            io:format("LING v~s (railing build for xen)~n", [?VERSION]),
            halt(0);
        false -> ok
    end,
    io:format("railing build arch: xen~n"),
    case lists:member(help, Opts) orelse Cmds =:= [] of
        true ->
            io:format("Usage: railing image [-h] [-l <lib>] [-i <include>] [-x <exclude>] [-n <name>] "
                      "[-d <domain>] [-m <memory>] [-e <extra>] [-v]~n"),
            halt(0);
        false -> ok
    end,
    [begin io:format("railing: unknown command '~s'~n", [C]), halt(1) end || C <- Cmds, C =/= "image"],
    image(Opts).

%% -- options (getopt semantics: short and long forms, attached or separate values) ------------------

spec() ->
    [{help, $h, "help", undefined}, {lib, $l, "lib", atom}, {include, $i, "include", string},
     {exclude, $x, "exclude", string}, {name, $n, "name", string}, {domain, $d, "domain", string},
     {memory, $m, "memory", integer}, {extra, $e, "extra", string}, {version, $v, "version", undefined}].

parse([], Opts, Cmds) -> {lists:reverse(Opts), lists:reverse(Cmds)};
parse(["--" | Rest], Opts, Cmds) -> {lists:reverse(Opts), lists:reverse(Cmds, Rest)};
parse(["--" ++ Long | Rest], Opts, Cmds) ->
    {Name, Inline} = case string:chr(Long, $=) of
                         0 -> {Long, none};
                         I -> {string:substr(Long, 1, I - 1), string:substr(Long, I + 1)}
                     end,
    case lists:keyfind(Name, 3, spec()) of
        false -> bad("invalid option: --" ++ Name);
        Spec -> take(Spec, Inline, Rest, Opts, Cmds)
    end;
parse([[$-, Short | Attached] | Rest], Opts, Cmds) ->
    case lists:keyfind(Short, 2, spec()) of
        false -> bad("invalid option: -" ++ [Short]);
        {_, _, _, undefined} = Spec when Attached =/= [] ->
            %% a flag followed by more flags: -hv
            parse(["-" ++ Attached | Rest], add(Spec, none, Opts), Cmds);
        Spec ->
            take(Spec, case Attached of [] -> none; _ -> Attached end, Rest, Opts, Cmds)
    end;
parse([Arg | Rest], Opts, Cmds) -> parse(Rest, Opts, [Arg | Cmds]).

take({_, _, _, undefined} = Spec, none, Rest, Opts, Cmds) -> parse(Rest, add(Spec, none, Opts), Cmds);
take({Key, _, _, undefined}, _Value, _Rest, _Opts, _Cmds) -> bad("option takes no value: " ++ atom_to_list(Key));
take(Spec, none, [Value | Rest], Opts, Cmds) -> parse(Rest, add(Spec, Value, Opts), Cmds);
take({Key, _, _, _}, none, [], _Opts, _Cmds) -> bad("missing option argument: " ++ atom_to_list(Key));
take(Spec, Value, Rest, Opts, Cmds) -> parse(Rest, add(Spec, Value, Opts), Cmds).

add({Key, _, _, undefined}, none, Opts) -> [Key | Opts];
add({Key, _, _, atom}, V, Opts) -> [{Key, list_to_atom(V)} | Opts];
add({Key, _, _, integer}, V, Opts) ->
    case catch list_to_integer(V) of
        N when is_integer(N) -> [{Key, N} | Opts];
        _ -> bad("invalid option argument: " ++ atom_to_list(Key) ++ " " ++ V)
    end;
add({Key, _, _, string}, V, Opts) -> [{Key, V} | Opts].

bad(Msg) ->
    io:format("~s~n", [Msg]),
    halt(1).

%% -- the image -----------------------------------------------------------------------------------

image(Opts) ->
    Project = case [N || {name, N} <- Opts] of
                  [] -> {ok, Cwd} = file:get_cwd(), filename:basename(Cwd);
                  Names -> lists:last(Names)
              end,
    ImgName = Project ++ ".img",
    Excludes = [?CACHE | [X || {exclude, X} <- Opts]],
    Includes = filelib:wildcard("**/ebin/*.{app,beam}")
        ++ lists:append([[F || F <- filelib:wildcard(filename:join(I, "**")), not filelib:is_dir(F)]
                         || {include, I} <- Opts]),
    Files = [F || F <- Includes, not lists:any(fun(E) -> lists:prefix(E, F) end, Excludes)],
    Libs = [kernel, stdlib | [L || {lib, L} <- Opts]],
    ok = filelib:ensure_dir(filename:join(?CACHE, "x")),
    DirFiles = [{filename:dirname(F), F} || F <- lists:usort(Files)],
    Custom = [{bucket_name(Dir), filename:join(["/", Project, Dir]),
               [entry(bucket_name(Dir), F) || {D, F} <- DirFiles, D =:= Dir]}
              || Dir <- lists:usort([D || {D, _} <- DirFiles])],
    StartBoot = filename:join([code:root_dir(), "bin", "start.boot"]),
    Buckets0 = [{boot, "/boot", [local_map, {file, "start.boot", StartBoot}]}]
        ++ [lib(L) || L <- Libs] ++ Custom,
    LocalMap = [io_lib:format("~s /~s~n", [Mnt, B]) || {B, Mnt, _} <- Buckets0],
    Buckets = [{B, Mnt, [case E of local_map -> {data, "local.map", iolist_to_binary(LocalMap)};
                                   _ -> E end || E <- Es]}
               || {B, Mnt, Es} <- Buckets0],
    io:format("Generate: ~s~n", [ImgName]),
    EmbedFs = filename:join(?CACHE, "embed.fs"),
    ok = file:write_file(EmbedFs, embed_fs(Buckets)),
    case os:getenv("RAILING_STANDIN_FAIL") of
        "after-embedfs" ->
            io:format("Run: objcopy ... embed.fs~nobjcopy: embed.fs: Input/output error~n"),
            halt(1);
        _ -> ok
    end,
    ok = vmling(),
    ok = sh(["objcopy", "-I", "binary", "-O", "elf64-little", "--alt-machine-code", "62",
             "--rename-section", ".data=.rodata,alloc,load,readonly,data,contents",
             "embed.fs", "embedfs.o"]),
    ok = sh(["ld", "-T", "ling.lds", "-nostdlib", "vmling.o", "embedfs.o", "-o", "../" ++ ImgName]),
    domain_config(Project, ImgName, Custom, Opts).

bucket_name(Dir) ->
    case filename:basename(Dir) of
        "" -> top;
        "." -> top;
        "ebin" -> bucket_name(filename:dirname(Dir));
        Stem -> list_to_atom(Stem)
    end.

lib(Lib) ->
    Dir = case code:lib_dir(Lib) of
              {error, _} -> io:format("can't find lib: ~p~n", [Lib]), halt(1);
              D -> D
          end,
    Mnt = filename:join(["/erlang/lib", filename:basename(Dir), "ebin"]),
    {Lib, Mnt, [entry(Lib, F) || F <- filelib:wildcard(filename:join([Dir, "ebin", "*.{app,beam}"]))]}.

entry(_Bucket, File) ->
    case filename:extension(File) of
        ".beam" -> {data, filename:rootname(filename:basename(File)) ++ ".ling", ling_container(File)};
        _ -> {file, filename:basename(File), File}
    end.

%% LING's module container (bc/ling_lib.erl specs_to_binary/1): "FOR1" Size "LING" then chunks, each
%% <<Tag:4/bytes, Size:32, Body, pad to 4>>. Atom: <<Count:32>> then <<Len:8, Name>> per atom.
%% ExpT: <<Count:32>> then <<AtomIndex:32, Arity:32, Offset:32>> per export (offset 0 here).
ling_container(Beam) ->
    {ok, {Mod, [{atoms, Indexed}, {exports, Exports}]}} = beam_lib:chunks(Beam, [atoms, exports]),
    Atoms = lists:usort([A || {_, A} <- Indexed] ++ [Mod]),
    Index = fun(A) -> length(lists:takewhile(fun(X) -> X =/= A end, Atoms)) end,
    AtomT = [<<(length(Atoms)):32>> | [[length(atom_to_list(A)), atom_to_list(A)] || A <- Atoms]],
    ExpT = [<<(length(Exports)):32>> | [<<(Index(F)):32, N:32, 0:32>> || {F, N} <- Exports]],
    Chunks = iolist_to_binary([chunk("Atom", AtomT), chunk("ExpT", ExpT)]),
    <<"FOR1", (byte_size(Chunks) + 4):32, "LING", Chunks/binary>>.

chunk(Tag, Body0) ->
    Body = iolist_to_binary(Body0),
    Pad = (4 - byte_size(Body) rem 4) rem 4,
    <<(list_to_binary(Tag))/binary, (byte_size(Body)):32, Body/binary, 0:(Pad * 8)>>.

embed_fs(Buckets) ->
    Count = lists:sum([length(Es) || {_, _, Es} <- Buckets]),
    [<<(length(Buckets)):32, Count:32>>
     | [[name8(atom_to_list(B)), <<(length(Es)):32>>, [file_entry(E) || E <- Es]] || {B, _, Es} <- Buckets]].

file_entry({data, Name, Data}) -> [name8(Name), <<(byte_size(Data)):32>>, Data];
file_entry({file, Name, Path}) ->
    {ok, Data} = file:read_file(Path),
    file_entry({data, Name, Data}).

name8(Name) ->
    Bin = list_to_binary(Name),
    <<(byte_size(Bin)):8, Bin/binary>>.

%% The stand-in for LING's core: LING's __xen_guest string (core/arch/xen/startup.S, x86_64) and a
%% _start that halts, plus a linker script with LING's layout (ENTRY(_start), . = 0, .text .rodata
%% .data .bss).
vmling() ->
    Asm = [
        "\t.section __xen_guest\n",
        "\t.ascii \"GUEST_OS=Ling\"\n",
        "\t.ascii \",XEN_VER=xen-3.0\"\n",
        "\t.ascii \",VIRT_BASE=0x0\"\n",
        "\t.ascii \",ELF_PADDR_OFFSET=0x0\"\n",
        "\t.ascii \",HYPERCALL_PAGE=0x1\"\n",
        "\t.ascii \",LOADER=generic\"\n",
        "\t.byte 0\n",
        "\t.text\n",
        "\t.globl _start\n",
        "_start:\n",
        "1:\thlt\n",
        "\tjmp 1b\n"],
    Lds = [
        "ENTRY(_start)\n",
        "SECTIONS\n{\n",
        "  . = 0;\n",
        "  .text : { *(.text) }\n",
        "  .rodata : { *(.rodata) }\n",
        "  .data : { *(.data) }\n",
        "  .bss : { *(.bss) }\n",
        "}\n"],
    ok = file:write_file(filename:join(?CACHE, "vmling.S"), Asm),
    ok = file:write_file(filename:join(?CACHE, "ling.lds"), Lds),
    sh(["as", "--64", "-o", "vmling.o", "vmling.S"]).

sh([Prog | Args]) ->
    case os:find_executable(Prog) of
        false ->
            io:format("Could not find command ~s~n", [Prog]),
            halt(1);
        Exe ->
            io:format("Run: ~s ~s~n", [Exe, string:join(Args, " ")]),
            Port = open_port({spawn_executable, Exe},
                             [{args, Args}, {cd, ?CACHE}, {line, 16384}, use_stdio, stderr_to_stdout,
                              exit_status]),
            sh_loop(Port)
    end.

sh_loop(Port) ->
    receive
        {Port, {data, {eol, Line}}} -> io:format("~s~n", [Line]), sh_loop(Port);
        {Port, {data, {noeol, Line}}} -> io:format("~s", [Line]), sh_loop(Port);
        {Port, {exit_status, 0}} -> ok;
        {Port, {exit_status, Status}} -> io:format("command failed: exit ~p~n", [Status]), halt(1)
    end.

domain_config(Project, ImgName, Custom, Opts) ->
    DomName = case [D || {domain, D} <- Opts] of [] -> "domain_config"; Ds -> lists:last(Ds) end,
    io:format("Generate: ~s~n", [DomName]),
    Memory = case [M || {memory, M} <- Opts] of
                 [] -> "";
                 Ms -> "memory = " ++ integer_to_list(lists:last(Ms)) ++ "\n"
             end,
    Pz = " -pz" ++ lists:append([" " ++ Mnt || {_, Mnt, _} <- Custom]),
    Extra = lists:append([E ++ " " || {extra, E} <- Opts]) ++ "-home /" ++ Project ++ Pz,
    case length(Extra) < 1024 of
        true ->
            ok = file:write_file(DomName, [
                "name = \"", Project, "\"\n",
                "kernel = \"", ImgName, "\"\n",
                "extra = \"", Extra, "\"\n",
                Memory,
                "vif = []\n"]);
        false ->
            io:format("\tfailed: 'extra' param length exceeded 1024 bytes~n"),
            halt(1)
    end.

%% -- test hook: record the call -------------------------------------------------------------------

log_call(Args) ->
    case os:getenv("RAILING_STANDIN_LOG") of
        false -> ok;
        "" -> ok;
        Log ->
            {ok, Cwd} = file:get_cwd(),
            Line = ["{\"cwd\": ", json(Cwd), ", \"args\": [", join([json(A) || A <- Args]), "]}\n"],
            ok = file:write_file(Log, Line, [append])
    end.

join([]) -> [];
join([H | T]) -> [H | [[", ", X] || X <- T]].

json(S) -> [$", [esc(C) || C <- S], $"].

esc($") -> "\\\"";
esc($\\) -> "\\\\";
esc(C) when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
esc(C) -> C.
