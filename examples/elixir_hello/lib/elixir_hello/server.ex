defmodule ElixirHello.Server do
  @moduledoc "HTTP/1.0 on :gen_tcp, one request per connection: GET / greets, GET /healthz says ok."
  use Task, restart: :permanent

  def start_link(_arg), do: Task.start_link(__MODULE__, :listen, [])

  def listen do
    port = Application.fetch_env!(:elixir_hello, :port)
    {:ok, socket} = :gen_tcp.listen(port, [:binary, packet: :http_bin, active: false, reuseaddr: true])
    accept(socket)
  end

  defp accept(socket) do
    {:ok, client} = :gen_tcp.accept(socket)
    pid = spawn(fn -> receive do: (:go -> serve(client)) end)
    :ok = :gen_tcp.controlling_process(client, pid)
    send(pid, :go)
    accept(socket)
  end

  defp serve(client) do
    case :gen_tcp.recv(client, 0, 5000) do
      {:ok, {:http_request, :GET, {:abs_path, path}, _}} ->
        skip_headers(client)
        {status, body} = answer(path)
        :gen_tcp.send(client, [
          "HTTP/1.0 #{status} OK\r\nContent-Type: text/plain\r\nContent-Length: #{byte_size(body)}\r\n\r\n",
          body
        ])

      _ ->
        :ok
    end

    :gen_tcp.close(client)
  end

  defp skip_headers(client) do
    case :gen_tcp.recv(client, 0, 5000) do
      {:ok, :http_eoh} -> :ok
      {:ok, _header} -> skip_headers(client)
      _ -> :ok
    end
  end

  defp answer("/healthz"), do: {200, "ok"}
  defp answer("/"), do: {200, Application.fetch_env!(:elixir_hello, :greeting) <> "\n"}
  defp answer(_), do: {404, "not found"}
end
