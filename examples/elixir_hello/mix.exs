defmodule ElixirHello.MixProject do
  use Mix.Project

  # No dependencies, so `MIX_ENV=prod mix release` needs no package manager and no network.
  def project do
    [
      app: :elixir_hello,
      version: "0.2.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [elixir_hello: [include_executables_for: [:unix]]]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {ElixirHello.Application, []}]
  end
end
