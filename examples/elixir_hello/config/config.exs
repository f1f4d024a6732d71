import Config

# Compile-time defaults; the pipeline merges pipeline.toml's [app.config] over these.
config :elixir_hello, port: 8000, greeting: "Hello from Elixir"
