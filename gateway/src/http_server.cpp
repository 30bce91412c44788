// The only translation unit of the gateway that includes Boost.Beast/Asio (each one costs ~12 s
// to compile). `io_threads` threads run one io_context; every connection is one coroutine on its
// own strand. A request is parsed here, handed to the worker_pool (the handler may block on
// PostgreSQL) and the coroutine waits on a timer that the worker cancels, through a post back to
// the strand, once the response is ready: no I/O thread ever blocks on the handler.
#include "yilian/gateway/http_server.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "yilian/gateway/worker_pool.hpp"

namespace yilian::gateway {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::string json_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20) {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\u00";
      out.push_back(hex[u >> 4]);
      out.push_back(hex[u & 0xf]);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// The transport's own errors (the FHIR layer answers everything else itself).
http_response outcome(int status, std::string_view code, std::string_view diagnostics) {
  http_response res;
  res.status = status;
  res.set_header("Content-Type", "application/fhir+json;charset=utf-8");
  res.body = R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":")" +
             std::string(code) + R"(","diagnostics":")" + json_escape(diagnostics) + R"("}]})";
  return res;
}

// Decrements a counter when the coroutine frame goes away, whichever way it ends.
struct counted {
  std::atomic<int>& counter;
  explicit counted(std::atomic<int>& c) : counter(c) { ++counter; }
  ~counted() { --counter; }
  counted(const counted&) = delete;
  counted& operator=(const counted&) = delete;
};

// A websocket connection: send() queues from any thread; one writer coroutine on the connection's
// strand drains the queue, woken through a timer that a posted cancel interrupts.
class ws_connection : public websocket_connection {
 public:
  ws_connection(std::shared_ptr<beast::tcp_stream> stream, asio::any_io_executor executor)
      : stream_(std::move(stream)), ws_(*stream_), wake_(executor, asio::steady_timer::time_point::max()) {}

  bool send(std::string text) override {
    std::lock_guard lock(mutex_);
    if (!open_) return false;
    queue_.push_back(std::move(text));
    asio::post(wake_.get_executor(), [self = shared_from_this_ws()] { self->wake_.cancel(); });
    return true;
  }

  // On the strand: writes queued messages until close().
  asio::awaitable<void> writer() {
    for (;;) {
      std::optional<std::string> next;
      {
        std::lock_guard lock(mutex_);
        if (!open_) co_return;
        if (!queue_.empty()) {
          next = std::move(queue_.front());
          queue_.pop_front();
        }
      }
      if (next) {
        auto [ec, n] = co_await ws_.async_write(asio::buffer(*next), use_tuple);
        if (ec) co_return;
        continue;
      }
      co_await wake_.async_wait(use_tuple);
    }
  }

  void close() {
    {
      std::lock_guard lock(mutex_);
      open_ = false;
    }
    wake_.cancel();
  }

  websocket::stream<beast::tcp_stream&>& ws() { return ws_; }
  std::weak_ptr<ws_connection> self;

 private:
  std::shared_ptr<ws_connection> shared_from_this_ws() { return self.lock(); }

  std::shared_ptr<beast::tcp_stream> stream_;
  websocket::stream<beast::tcp_stream&> ws_;
  asio::steady_timer wake_;
  std::mutex mutex_;
  std::deque<std::string> queue_;
  bool open_ = true;
};

}  // namespace

struct http_server::impl {
  http_server_options options;
  request_handler handler;
  worker_pool& workers;
  request_observer observer;

  std::vector<std::thread> threads;
  std::uint16_t bound_port = 0;

  std::atomic<bool> stopping{false};
  std::atomic<int> in_flight{0};  // requests read and not yet answered
  std::atomic<int> sessions{0};   // live connection coroutines
  std::atomic<std::uint64_t> error_ids{0};
  std::vector<websocket_endpoint> websocket_endpoints;

  // Open connections, so stop() can close the idle ones. Guarded by connections_mutex.
  std::mutex connections_mutex;
  bool closing_connections = false;
  std::uint64_t next_connection = 0;
  std::unordered_map<std::uint64_t, std::weak_ptr<beast::tcp_stream>> connections;

  // Handler calls handed to workers and not yet posted back: the io_context must outlive them.
  std::mutex tasks_mutex;
  std::condition_variable tasks_done;
  int pending_tasks = 0;

  // Last, so they go first: destroying the io_context destroys suspended connection coroutines,
  // whose frames still use the members above.
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  // The accept loop and stop()'s close of the acceptor run on this strand, never concurrently.
  asio::strand<asio::io_context::executor_type> accept_strand{ioc.get_executor()};
  tcp::acceptor acceptor{ioc};

  impl(http_server_options o, request_handler h, worker_pool& w, request_observer obs)
      : options(std::move(o)), handler(std::move(h)), workers(w), observer(std::move(obs)) {}

  asio::awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(ioc), use_tuple);
      if (ec) {
        if (stopping.load() || ec == asio::error::operation_aborted) co_return;
        // EMFILE and friends: back off briefly instead of spinning, keep accepting.
        asio::steady_timer pause(accept_strand, std::chrono::milliseconds(50));
        co_await pause.async_wait(use_tuple);
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      auto executor = socket.get_executor();
      asio::co_spawn(executor, session(std::move(socket)), asio::detached);
    }
  }

  http_response call_handler(const http_request& request) noexcept {
    try {
      return handler(request);
    } catch (const std::exception& e) {
      return internal_error(request, e.what());
    } catch (...) {
      return internal_error(request, "unknown exception");
    }
  }

  http_response internal_error(const http_request& request, std::string_view what) noexcept {
    auto id = "http-" + std::to_string(++error_ids);
    try {
      std::cerr << "error [" << id << "] " << request.method << " " << request.target << ": " << what << std::endl;
      return outcome(500, "exception",
                     "Internal error while processing the request (correlation id " + id +
                         "); the server log has the details");
    } catch (...) {
      http_response res;
      res.status = 500;
      return res;
    }
  }

  // Runs the handler on a worker; resumes on this connection's strand when it is done.
  asio::awaitable<http_response> run_handler(http_request request) {
    auto executor = co_await asio::this_coro::executor;
    struct state {
      explicit state(const asio::any_io_executor& ex) : timer(ex, asio::steady_timer::time_point::max()) {}
      asio::steady_timer timer;
      http_response response;
      bool done = false;
    };
    auto st = std::make_shared<state>(executor);
    {
      std::lock_guard lock(tasks_mutex);
      ++pending_tasks;
    }
    workers.submit([this, request = std::move(request), st, executor]() mutable {
      http_response response = call_handler(request);
      asio::post(executor, [st, response = std::move(response)]() mutable {
        st->response = std::move(response);
        st->done = true;
        st->timer.cancel();
      });
      // Drop this task's handles on the io_context before the count lets ~http_server destroy it
      // (the worker destroys the task itself only after this function returns).
      st.reset();
      executor = asio::any_io_executor();
      std::lock_guard lock(tasks_mutex);
      if (--pending_tasks == 0) tasks_done.notify_all();
    });
    while (!st->done) co_await st->timer.async_wait(use_tuple);
    co_return std::move(st->response);
  }

  asio::awaitable<beast::error_code> write(beast::tcp_stream& stream, unsigned version, bool keep_alive,
                                           const http_response& r, bool head) {
    http::response<http::string_body> res;
    res.version(version);
    res.result(static_cast<unsigned>(r.status));
    res.set(http::field::server, "yilian");
    for (const auto& h : r.headers) res.insert(h.name, h.value);
    res.keep_alive(keep_alive);
    bool header_only = head || r.status == 204 || r.status == 304 || (r.status >= 100 && r.status < 200);
    if (!(head && r.body.empty())) {
      res.body() = r.body;
      res.prepare_payload();  // Content-Length from the body (also for HEAD: what GET would send)
    }
    stream.expires_after(options.read_timeout);
    beast::error_code ec;
    if (header_only) {
      res.body().clear();
      http::response_serializer<http::string_body> sr{res};
      std::tie(ec, std::ignore) = co_await http::async_write_header(stream, sr, use_tuple);
    } else {
      std::tie(ec, std::ignore) = co_await http::async_write(stream, res, use_tuple);
    }
    co_return ec;
  }

  // After an error reply on a connection the client may still be sending: read and drop what
  // arrives for a moment so closing does not reset the connection before the reply is read.
  asio::awaitable<void> linger(beast::tcp_stream& stream) {
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    std::array<char, 16 * 1024> sink;
    stream.expires_after(std::chrono::seconds(2));
    for (std::size_t total = 0; total < 64 * 1024 * 1024;) {
      auto [rec, n] = co_await stream.async_read_some(asio::buffer(sink), use_tuple);
      if (rec) break;
      total += n;
    }
  }

  void log(const std::string& remote, std::string_view method, std::string_view target, int status,
           std::size_t bytes, std::chrono::steady_clock::time_point started) {
    if (!observer) return;
    request_log_entry entry;
    entry.remote_address = remote;
    entry.method = std::string(method);
    entry.target = std::string(target);
    entry.status = status;
    entry.response_bytes = bytes;
    entry.duration =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
    try {
      observer(entry);
    } catch (const std::exception& e) {
      std::cerr << "error: request observer threw: " << e.what() << std::endl;
    } catch (...) {
    }
  }

  // Runs `task` on a worker, counted so the io_context outlives it.
  void submit_task(std::function<void()> task) {
    {
      std::lock_guard lock(tasks_mutex);
      ++pending_tasks;
    }
    workers.submit([this, task = std::move(task)] {
      try {
        task();
      } catch (const std::exception& e) {
        std::cerr << "error: websocket handler threw: " << e.what() << std::endl;
      }
      std::lock_guard lock(tasks_mutex);
      if (--pending_tasks == 0) tasks_done.notify_all();
    });
  }

  const websocket_endpoint* websocket_for(const http::request<http::string_body>& req) const {
    if (!websocket::is_upgrade(req)) return nullptr;
    std::string_view target = req.target();
    target = target.substr(0, target.find('?'));
    for (const auto& e : websocket_endpoints)
      if (e.path == target) return &e;
    return nullptr;
  }

  asio::awaitable<void> websocket_session(std::shared_ptr<beast::tcp_stream> stream_ptr,
                                          const http::request<http::string_body>& req, const websocket_endpoint& endpoint) {
    auto executor = co_await asio::this_coro::executor;
    stream_ptr->expires_never();
    auto conn = std::make_shared<ws_connection>(stream_ptr, executor);
    conn->self = conn;
    conn->ws().set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    auto [aec] = co_await conn->ws().async_accept(req, use_tuple);
    if (aec) co_return;
    struct closer {
      std::shared_ptr<ws_connection> conn;
      ~closer() { conn->close(); }
    } close_on_exit{conn};
    asio::co_spawn(executor, [conn]() -> asio::awaitable<void> { co_await conn->writer(); }, asio::detached);
    std::shared_ptr<websocket_connection> handle = conn;
    beast::flat_buffer buffer;
    for (;;) {
      auto [ec, n] = co_await conn->ws().async_read(buffer, use_tuple);
      if (ec) break;
      std::string message = beast::buffers_to_string(buffer.data());
      buffer.consume(buffer.size());
      if (endpoint.on_message) submit_task([&endpoint, handle, message] { endpoint.on_message(handle, message); });
    }
    conn->close();
    if (endpoint.on_close) submit_task([&endpoint, handle] { endpoint.on_close(handle); });
  }

  asio::awaitable<void> session(tcp::socket socket) {
    counted live(sessions);
    auto stream_ptr = std::make_shared<beast::tcp_stream>(std::move(socket));
    auto& stream = *stream_ptr;
    std::uint64_t id = 0;
    {
      std::lock_guard lock(connections_mutex);
      if (closing_connections) co_return;
      id = next_connection++;
      connections.emplace(id, stream_ptr);
    }
    struct unregister {
      impl& self;
      std::uint64_t id;
      ~unregister() {
        std::lock_guard lock(self.connections_mutex);
        self.connections.erase(id);
      }
    } unregister_on_exit{*this, id};

    std::string remote;
    {
      beast::error_code ec;
      auto ep = stream.socket().remote_endpoint(ec);
      if (!ec) remote = ep.address().to_string();
    }
    beast::flat_buffer buffer;
    for (;;) {
      // Idle: wait for the first byte of the next request.
      if (buffer.size() == 0) {
        stream.expires_after(options.idle_timeout);
        auto [ec, n] = co_await stream.async_read_some(buffer.prepare(8192), use_tuple);
        if (ec) break;  // closed by the client, idle timeout, or stop()
        buffer.commit(n);
      }
      auto started = std::chrono::steady_clock::now();
      http::request_parser<http::string_body> parser;
      parser.body_limit(options.body_limit);
      parser.header_limit(64 * 1024);
      stream.expires_after(options.read_timeout);
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
      if (!ec && !parser.is_done()) {
        auto expect = parser.get()[http::field::expect];
        if (beast::iequals(expect, "100-continue")) {
          http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
          std::tie(ec, std::ignore) = co_await http::async_write(stream, go_on, use_tuple);
        }
        if (!ec) std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, use_tuple);
      }
      if (ec) {
        std::optional<http_response> reply;
        if (ec == http::error::body_limit) {
          reply = outcome(413, "too-costly",
                          "Request body exceeds the limit of " + std::to_string(options.body_limit) + " bytes");
        } else if (ec == http::error::header_limit) {
          reply = outcome(431, "too-costly", "Request header fields are too large");
        } else if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
                   ec != http::error::end_of_stream && ec != http::error::partial_message) {
          reply = outcome(400, "structure", "Malformed HTTP request: " + ec.message());
        }
        if (reply) {
          std::string method, target;
          if (parser.is_header_done()) {
            method = std::string(parser.get().method_string());
            target = std::string(parser.get().target());
          }
          auto wec = co_await write(stream, 11, false, *reply, false);
          log(remote, method, target, reply->status, reply->body.size(), started);
          if (!wec) co_await linger(stream);
        }
        break;  // timeouts, resets and bad requests end the connection
      }

      auto& req = parser.get();
      if (const websocket_endpoint* endpoint = websocket_for(req)) {
        log(remote, req.method_string(), req.target(), 101, 0, started);
        co_await websocket_session(stream_ptr, req, *endpoint);
        break;
      }
      http_request request;
      request.method = std::string(req.method_string());
      request.target = std::string(req.target());
      request.remote_address = remote;
      request.headers.reserve(16);
      for (const auto& field : req)
        request.headers.push_back({std::string(field.name_string()), std::string(field.value())});
      request.body = std::move(req.body());
      const bool keep_alive = req.keep_alive();
      const unsigned version = req.version();
      const bool head = req.method() == http::verb::head;

      beast::error_code wec;
      int status = 0;
      std::size_t bytes = 0;
      bool keep = false;
      {
        counted busy(in_flight);
        stream.expires_never();  // the handler takes what it takes; idle/read timers are not running
        http_response response = co_await run_handler(std::move(request));
        keep = keep_alive && !stopping.load();
        wec = co_await write(stream, version, keep, response, head);
        status = response.status;
        bytes = head ? 0 : response.body.size();
      }
      log(remote, req.method_string(), req.target(), status, bytes, started);
      if (wec || !keep) break;
    }
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.close();
  }

  // Closes every open connection (on its strand); in-flight responses still waiting on a worker
  // end when the worker posts back.
  void close_connections() {
    std::lock_guard lock(connections_mutex);
    closing_connections = true;
    for (auto& [id, weak] : connections) {
      if (auto stream = weak.lock()) {
        asio::post(stream->get_executor(), [weak = std::weak_ptr<beast::tcp_stream>(stream)] {
          if (auto s = weak.lock()) {
            beast::error_code ignored;
            s->socket().shutdown(tcp::socket::shutdown_both, ignored);
            s->close();
          }
        });
      }
    }
  }
};

http_server::http_server(http_server_options options, request_handler handler, worker_pool& workers,
                         request_observer observer)
    : impl_(std::make_unique<impl>(std::move(options), std::move(handler), workers, std::move(observer))) {}

http_server::~http_server() {
  stop(std::chrono::milliseconds{0});
  wait();
  // A worker still running a handler will post to this io_context: let it finish first.
  std::unique_lock lock(impl_->tasks_mutex);
  impl_->tasks_done.wait(lock, [this] { return impl_->pending_tasks == 0; });
}

void http_server::start() {
  auto& i = *impl_;
  auto address = asio::ip::make_address(i.options.host);
  tcp::endpoint endpoint{address, i.options.port};
  i.acceptor.open(endpoint.protocol());
  i.acceptor.set_option(asio::socket_base::reuse_address(true));
  i.acceptor.bind(endpoint);
  i.acceptor.listen(asio::socket_base::max_listen_connections);
  i.bound_port = i.acceptor.local_endpoint().port();
  i.work.emplace(i.ioc.get_executor());
  asio::co_spawn(i.accept_strand, i.accept_loop(), asio::detached);
  unsigned n = std::max(1u, i.options.io_threads);
  for (unsigned t = 0; t < n; ++t) i.threads.emplace_back([&i] { i.ioc.run(); });
}

void http_server::add_websocket_endpoint(websocket_endpoint endpoint) {
  impl_->websocket_endpoints.push_back(std::move(endpoint));
}

std::uint16_t http_server::port() const noexcept { return impl_->bound_port; }

void http_server::wait() {
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
  impl_->threads.clear();
}

void http_server::stop(std::chrono::milliseconds drain) {
  auto& i = *impl_;
  if (i.stopping.exchange(true)) return;
  // 1. Stop accepting.
  asio::post(i.accept_strand, [&i] {
    beast::error_code ignored;
    i.acceptor.close(ignored);
  });
  // 2. Let in-flight requests finish (their responses say Connection: close).
  auto deadline = std::chrono::steady_clock::now() + drain;
  while (i.in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // 3. Close the remaining (idle) connections and let the io threads run out of work.
  i.close_connections();
  i.work.reset();
  auto grace = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (i.sessions.load() > 0 && std::chrono::steady_clock::now() < grace)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  i.ioc.stop();
}

void block_termination_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

int wait_for_termination_signal() {
  block_termination_signals();
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  int sig = 0;
  while (sigwait(&signals, &sig) != 0) {
  }
  return sig;
}

}  // namespace yilian::gateway
