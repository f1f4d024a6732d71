defmodule ElixirHello.Application do
  @moduledoc "Starts the listener under a supervisor."
  use Application

  @impl true
  def start(_type, _args) do
    Supervisor.start_link([ElixirHello.Server], strategy: :one_for_one, name: ElixirHello.Supervisor)
  end
end
