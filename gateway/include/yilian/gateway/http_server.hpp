// Asynchronous HTTP/1.1 server (Boost.Beast, C++20 coroutines) behind a Beast-free interface.
// One coroutine per connection: keep-alive, body limit, read and idle timeouts. Requests are
// handed to a `worker_pool` so PostgreSQL work never blocks an I/O thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "yilian/gateway/http_message.hpp"

namespace yilian::gateway {

class worker_pool;

struct http_server_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;          // 0 = pick a free port (tests)
  unsigned io_threads = 1;
  std::size_t body_limit = 64 * 1024 * 1024;
  std::chrono::milliseconds read_timeout{30'000};   // whole request, once its first byte arrived
  std::chrono::milliseconds idle_timeout{60'000};   // keep-alive wait for the next request
};

// Called once per finished request (access log, metrics).
struct request_log_entry {
  std::string remote_address;
  std::string method;
  std::string target;
  int status = 0;
  std::size_t response_bytes = 0;
  std::chrono::microseconds duration{0};
};
using request_observer = std::function<void(const request_log_entry&)>;

// One upgraded websocket connection (text messages).
class websocket_connection {
 public:
  virtual ~websocket_connection() = default;
  // Queues a text message; callable from any thread. False once the connection has ended.
  virtual bool send(std::string text) = 0;
};

// Where the server accepts websocket upgrades (an exact path; the query is ignored).
struct websocket_endpoint {
  std::string path;
  // Each received text message, on a worker thread (it may block on PostgreSQL).
  std::function<void(const std::shared_ptr<websocket_connection>&, const std::string&)> on_message;
  // Once, when the connection has ended (on a worker thread).
  std::function<void(const std::shared_ptr<websocket_connection>&)> on_close;
};

class http_server {
 public:
  http_server(http_server_options options, request_handler handler, worker_pool& workers,
              request_observer observer = {});
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  // Accepts websocket upgrades on `endpoint.path` (call before start()).
  void add_websocket_endpoint(websocket_endpoint endpoint);

  // Binds and starts accepting; throws std::system_error when the address is unusable.
  void start();
  // The bound port (useful with port 0).
  std::uint16_t port() const noexcept;
  // Blocks until stop() completes.
  void wait();
  // Graceful: stop accepting, let in-flight requests finish (up to `drain`), close connections.
  // Safe to call from a signal-handling thread and more than once.
  void stop(std::chrono::milliseconds drain = std::chrono::milliseconds{10'000});

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Blocks SIGINT and SIGTERM in the calling thread. Call it in main() before any thread is created
// (worker_pool, http_server::start) so every thread inherits the mask and the signals stay pending
// for wait_for_termination_signal() instead of killing the process.
void block_termination_signals();

// Blocks until SIGINT or SIGTERM arrives, then returns the signal. Call block_termination_signals()
// first, before starting threads; this function blocks them too, but only for the calling thread.
int wait_for_termination_signal();

}  // namespace yilian::gateway
