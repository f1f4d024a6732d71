%% @doc A small JSON encoder (OTP 17 and 25 have no json module).
%%
%% Terms: an object is `{[{Key, Value}]}' with binary or atom keys (kept in the given order), an
%% array is a list, a string is a UTF-8 binary, and `true', `false', `null', integers and floats
%% are themselves. Any other atom is encoded as a string.
-module(erlang_web_json).

-export([encode/1]).

-export_type([json/0]).

-type json() :: {[{binary() | atom(), json()}]} | [json()] | binary() | atom() | integer()
              | float().

%% @doc Encode a term as JSON text (iodata, UTF-8).
-spec encode(json()) -> iodata().
encode({Members}) when is_list(Members) ->
    [${, members(Members), $}];
encode(true) ->
    <<"true">>;
encode(false) ->
    <<"false">>;
encode(null) ->
    <<"null">>;
encode(A) when is_atom(A) ->
    string(atom_to_binary(A, utf8));
encode(B) when is_binary(B) ->
    string(B);
encode(I) when is_integer(I) ->
    integer_to_binary(I);
encode(F) when is_float(F) ->
    %% ~w prints the shortest text that reads back as the same float; it is valid JSON.
    io_lib:format("~w", [F]);
encode(L) when is_list(L) ->
    [$[, elements(L), $]].

members([]) ->
    [];
members([{K, V}]) ->
    [key(K), $:, encode(V)];
members([{K, V} | Rest]) ->
    [key(K), $:, encode(V), $, | members(Rest)].

key(K) when is_atom(K) -> string(atom_to_binary(K, utf8));
key(K) when is_binary(K) -> string(K).

elements([]) -> [];
elements([V]) -> [encode(V)];
elements([V | Rest]) -> [encode(V), $, | elements(Rest)].

string(B) ->
    [$", escape(B, B, 0, 0, []), $"].

%% Copy runs of characters that need no escape as sub-binaries; bytes >= 128 (UTF-8) pass through.
escape(<<>>, Orig, Start, Len, Acc) ->
    lists:reverse([binary:part(Orig, Start, Len) | Acc]);
escape(<<C, Rest/binary>>, Orig, Start, Len, Acc) when C < 16#20; C =:= $"; C =:= $\\ ->
    Acc1 = [esc(C), binary:part(Orig, Start, Len) | Acc],
    escape(Rest, Orig, Start + Len + 1, 0, Acc1);
escape(<<_, Rest/binary>>, Orig, Start, Len, Acc) ->
    escape(Rest, Orig, Start, Len + 1, Acc).

esc($") -> <<"\\\"">>;
esc($\\) -> <<"\\\\">>;
esc($\n) -> <<"\\n">>;
esc($\r) -> <<"\\r">>;
esc($\t) -> <<"\\t">>;
esc($\b) -> <<"\\b">>;
esc($\f) -> <<"\\f">>;
esc(C) -> [<<"\\u00">>, hex(C bsr 4), hex(C band 15)].

hex(N) when N < 10 -> $0 + N;
hex(N) -> $a + N - 10.
