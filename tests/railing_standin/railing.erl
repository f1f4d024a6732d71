%% TEST DOUBLE: a stand-in for LING's `railing` (Erlang on Xen, cloudozer/ling, railing/railing.erl),
%% which cannot exist on the test machines (it needs LING's prebuilt core, vmling.o, built with OTP 17).
%% Used only by the pipeline's tests; the pipeline calls it exactly as it calls the real railing.
%% tests/railing_standin/__init__.py builds it into an escript as LING's railing/escriptize does:
%% this module's beam plus vmling.o and ling.lds in the escript's archive.
%%
%% What it follows, as documented by LING's sources:
%% - the command line: `railing image [-l LIB]... [-i DIR]... [-x PREFIX]... [-n NAME] [-d FILE]
%%   [-m MB] [-e EXTRA]... [-v] [-h]` (long forms --lib --include --exclude --name --domain --memory
%%   --extra --version --help, also --opt=VALUE and -oVALUE); `-v` prints
%%   "LING v<version> (railing build for xen)"; it refuses an Erlang/OTP release below 17.
%% - it unpacks its own archive (vmling.o, ling.lds, ...) into .railing, as railing does with
%%   escript:extract/2 and zip:unzip/1.
%% - the files: `**/ebin/*.{app,beam}` under the current directory plus every file under each `-i`
%%   directory, minus `-x` prefixes and `.railing`; the libraries kernel, stdlib and each `-l` from the
%%   running Erlang's code:lib_dir/1; a `boot` bucket with `local.map` and the running Erlang's
%%   bin/start.boot.
%% - each beam becomes <module>.ling, LING's module container as bc/ling_lib.erl's specs_to_binary/1
%%   writes it: "FOR1" Size "LING" and the chunks Atom, ExpT, ImpT, Code, CatT, FunT, StrT, LitT, and
%%   Attr and CInf when the beam has them (the beam's attributes and compile info, as they are).
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
%% - failures: a command that fails (`ok = sh(...)` getting {error, Status}) and a beam its translator
%%   cannot read crash the escript, which then exits with status 127 and an "escript: exception
%%   error: ..." report, as railing's do.
%%
%% Where it differs (it cannot do what only LING's core can):
%% - vmling.o is not LING's VM (see __init__.py): a relocatable object with LING's `__xen_guest`
%%   string, a `_start` that halts and, like LING's core/outlet.c, an `outlet_drivers` table that
%%   references `ol_disk_factory` only when built with the disk driver. The image does not boot.
%% - Beams are not translated to LING code: the Code, CatT and FunT chunks are empty, ExpT offsets
%%   are 0 and there is no Line chunk.
%% - Which beams it refuses: railing decodes a beam's code with OTP 17's opcode table and a whitelist
%%   of OTP 17 instructions (bc/ling_disasm.erl), so a beam compiled by a later OTP crashes it. The
%%   stand-in runs on the host's OTP and cannot decode by OTP 17's table; it refuses a project beam
%%   whose compile info names a compiler other than OTP 17's (5.0.x) unless the stand-in OTP 17
%%   (fake_otp.py, which compiles with the host's OTP) marked it {standin_otp_release, "17"}. Beams
%%   of the libraries come from the running OTP, the stand-in for OTP 17, and are not checked.
%%
%% Test hooks (environment): RAILING_STANDIN_LOG=FILE appends each call's arguments and working
%% directory to FILE as a JSON line; RAILING_STANDIN_FAIL=after-embedfs makes objcopy fail after
%% embed.fs is written (a railing failing mid-way).
-module(railing).
-export([main/1]).

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
    unpack_archive(),
    [check_otp17(F) || F <- Files, filename:extension(F) =:= ".beam"],
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
    Input = case os:getenv("RAILING_STANDIN_FAIL") of
                "after-embedfs" -> "embed.fs.unreadable";
                _ -> "embed.fs"
            end,
    ok = sh(["objcopy", "-I", "binary", "-O", "elf64-little", "--alt-machine-code", "62",
             "--rename-section", ".data=.rodata,alloc,load,readonly,data,contents",
             Input, "embedfs.o"]),
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
%% <<Tag:4/bytes, Size:32, Body, pad to 4>>, in railing's order. Atom: <<Count:32>> then <<Len:8, Name>>
%% per atom (the beam's atom table, in its order); ExpT: <<Count:32>> then <<Atom:32, Arity:32,
%% Offset:32>> (offset 0 here); ImpT: <<Count:32>> then <<ModAtom:32, FunAtom:32, Arity:32>>;
%% StrT: the beam's; LitT: <<Count:32>> then <<Size:32, term_to_binary(Literal)>>; Attr and CInf:
%% term_to_binary of the beam's attributes and compile info, and left out when the beam has none.
ling_container(Beam) ->
    {ok, {Mod, [{atoms, Indexed}, {exports, Exports}, {imports, Imports}]}} =
        beam_lib:chunks(Beam, [atoms, exports, imports]),
    Atoms = [A || {_, A} <- lists:keysort(1, Indexed)],
    Index = fun(A) -> length(lists:takewhile(fun(X) -> X =/= A end, Atoms)) end,
    AtomT = [<<(length(Atoms)):32>> | [[length(atom_to_list(A)), atom_to_list(A)] || A <- Atoms]],
    ExpT = [<<(length(Exports)):32>> | [<<(Index(F)):32, N:32, 0:32>> || {F, N} <- Exports]],
    ImpT = [<<(length(Imports)):32>> | [<<(Index(M)):32, (Index(F)):32, N:32>> || {M, F, N} <- Imports]],
    Literals = [term_to_binary(L) || L <- literals(Beam)],
    LitT = [<<(length(Literals)):32>> | [<<(byte_size(L)):32, L/binary>> || L <- Literals]],
    Optional = [{Tag, term_to_binary(binary_to_term(Bin))}
                || {Tag, Bin} <- [raw_chunk(Beam, "Attr"), raw_chunk(Beam, "CInf")], Bin =/= missing],
    Chunks = iolist_to_binary(
               [chunk("Atom", AtomT), chunk("ExpT", ExpT), chunk("ImpT", ImpT), chunk("Code", <<0:32>>),
                chunk("CatT", <<0:32>>), chunk("FunT", <<0:32>>), chunk("StrT", str_table(Beam)),
                chunk("LitT", LitT) | [chunk(Tag, Bin) || {Tag, Bin} <- Optional]]),
    _ = Mod,
    <<"FOR1", (byte_size(Chunks) + 4):32, "LING", Chunks/binary>>.

raw_chunk(Beam, Tag) ->
    case beam_lib:chunks(Beam, [Tag]) of
        {ok, {_, [{Tag, Bin}]}} -> {Tag, Bin};
        _ -> {Tag, missing}
    end.

str_table(Beam) ->
    case raw_chunk(Beam, "StrT") of {_, missing} -> <<>>; {_, Bin} -> Bin end.

%% The beam's literal table ("LitT": <<UncompressedSize:32, zlib data>>, or stored when the size is 0),
%% as railing's disassembler decodes it: <<Count:32>> then <<Size:32, ExternalTerm>> per literal.
literals(Beam) ->
    case raw_chunk(Beam, "LitT") of
        {_, missing} -> [];
        {_, <<0:32, Table/binary>>} -> decode_literals(Table);
        {_, <<_:32, Compressed/binary>>} -> decode_literals(zlib:uncompress(Compressed))
    end.

decode_literals(<<_Count:32, Rest/binary>>) -> decode_literal(Rest).

decode_literal(<<>>) -> [];
decode_literal(<<Size:32, Term:Size/binary, Rest/binary>>) -> [binary_to_term(Term) | decode_literal(Rest)].

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

%% railing's own archive (the escript's) holds vmling.o and ling.lds: unpack it into .railing.
unpack_archive() ->
    {ok, Sections} = escript:extract(escript:script_name(), []),
    Archive = proplists:get_value(archive, Sections),
    {ok, _} = zip:unzip(Archive, [{cwd, ?CACHE}]),
    ok.

%% A project beam compiled by another OTP than 17 crashes the escript (see the header).
check_otp17(Beam) ->
    case beam_lib:chunks(Beam, [compile_info]) of
        {ok, {_, [{compile_info, Info}]}} ->
            Version = proplists:get_value(version, Info, ""),
            Marked = proplists:get_value(standin_otp_release, Info),
            case lists:prefix("5.0", Version) orelse Marked =:= ?OTP_VER of
                true -> ok;
                false -> erlang:error({not_compiled_by_otp17, Beam, {compiler, Version}})
            end;
        _ -> ok  % no compile info: nothing says which OTP made it
    end.

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
        {Port, {exit_status, Status}} -> {error, Status}
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
