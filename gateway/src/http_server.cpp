// The only translation unit of the gateway that includes Boost.Beast/Asio (each one costs ~12 s
// to compile). One coroutine per connection on a strand; requests run on the worker_pool and the
// response is posted back to the connection's strand.
#include "yilian/gateway/http_server.hpp"

#include <signal.h>

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
#include <iostream>
#include <optional>
#include <thread>
#include <vector>

#include "yilian/gateway/worker_pool.hpp"

namespace yilian::gateway {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

http_response outcome(int status, std::string_view code, std::string_view diagnostics) {
  http_response res;
  res.status = status;
  res.set_header("Content-Type", "application/fhir+json;charset=utf-8");
  std::string escaped;
  for (char c : diagnostics) {
    if (c == '"' || c == '\\') escaped.push_back('\\');
    escaped.push_back(c);
  }
  res.body = R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":")" + std::string(code) +
             R"(","diagnostics":")" + escaped + R"("}]})";
  return res;
}

}  // namespace

struct http_server::impl {
  http_server_options options;
  request_handler handler;
  worker_pool& workers;
  request_observer observer;

  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  tcp::acceptor acceptor{ioc};
  std::vector<std::thread> threads;
  std::atomic<int> in_flight{0};
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> error_ids{0};
  std::uint16_t bound_port = 0;

  impl(http_server_options o, request_handler h, worker_pool& w, request_observer obs)
      : options(std::move(o)), handler(std::move(h)), workers(w), observer(std::move(obs)) {}

  asio::awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(ioc), use_tuple);
      if (ec) {
        if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
        continue;  // e.g. too many open files: keep accepting
      }
      auto executor = socket.get_executor();
      asio::co_spawn(executor, session(std::move(socket)), asio::detached);
    }
  }

  // Runs the handler on a worker and resumes on this connection's strand when it is done.
  asio::awaitable<http_response> run_handler(http_request request) {
    auto executor = co_await asio::this_coro::executor;
    auto timer = std::make_shared<asio::steady_timer>(executor, asio::steady_timer::time_point::max());
    auto result = std::make_shared<http_response>();
    auto done = std::make_shared<bool>(false);
    workers.submit([this, request = std::move(request), timer, result, done, executor]() mutable {
      try {
        *result = handler(request);
      } catch (const std::exception& e) {
        auto id = ++error_ids;
        std::cerr << "error [http " << id << "] " << request.method << " " << request.target << ": " << e.what()
                  << std::endl;
        *result = outcome(500, "exception",
                          "Internal error while processing the request (correlation id http-" + std::to_string(id) +
                              "); the server log has details");
      }
      asio::post(executor, [timer, done] {
        *done = true;
        timer->cancel();
      });
    });
    while (!*done) co_await timer->async_wait(use_tuple);
    co_return std::move(*result);
  }

  asio::awaitable<void> write(beast::tcp_stream& stream, unsigned version, bool keep_alive, const http_response& r,
                              bool head) {
    http::response<http::string_body> res{static_cast<http::status>(r.status), version};
    res.set(http::field::server, "yilian");
    for (const auto& h : r.headers) res.set(h.name, h.value);
    res.keep_alive(keep_alive);
    res.body() = r.body;
    res.prepare_payload();
    if (head) res.body().clear();
    stream.expires_after(options.read_timeout);
    if (head) {
      http::response_serializer<http::string_body> sr{res};
      co_await http::async_write_header(stream, sr, use_tuple);
    } else {
      co_await http::async_write(stream, res, use_tuple);
    }
  }

  asio::awaitable<void> session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    std::string remote;
    {
      beast::error_code ec;
      auto ep = stream.socket().remote_endpoint(ec);
      if (!ec) remote = ep.address().to_string();
    }
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(options.body_limit);
      parser.header_limit(64 * 1024);
      stream.expires_after(options.idle_timeout);
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
      (void)n;
      if (!ec && !parser.is_done()) {
        stream.expires_after(options.read_timeout);
        std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, use_tuple);
      }
      if (ec) {
        if (ec == http::error::body_limit) {
          auto res = outcome(413, "too-costly",
                             "Request body exceeds the limit of " + std::to_string(options.body_limit) + " bytes");
          co_await write(stream, 11, false, res, false);
        } else if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
                   ec != http::error::end_of_stream && ec != http::error::partial_message) {
          co_await write(stream, 11, false, outcome(400, "structure", "Malformed HTTP request: " + ec.message()), false);
        }
        break;  // end of stream, timeout, reset: close quietly
      }
      auto started = std::chrono::steady_clock::now();
      auto& req = parser.get();
      http_request request;
      request.method = std::string(req.method_string());
      request.target = std::string(req.target());
      request.remote_address = remote;
      request.headers.reserve(16);
      for (const auto& field : req) request.headers.push_back({std::string(field.name_string()), std::string(field.value())});
      request.body = std::move(req.body());
      bool keep_alive = req.keep_alive();
      unsigned version = req.version();
      bool head = req.method() == http::verb::head;

      ++in_flight;
      http_response response = co_await run_handler(std::move(request));
      bool keep = keep_alive && !stopping.load();
      co_await write(stream, version, keep, response, head);
      --in_flight;
      if (observer) {
        request_log_entry entry;
        entry.remote_address = remote;
        entry.method = std::string(req.method_string());
        entry.target = std::string(req.target());
        entry.status = response.status;
        entry.response_bytes = response.body.size();
        entry.duration =
            std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
        observer(entry);
      }
      if (!keep) break;
    }
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }
};

http_server::http_server(http_server_options options, request_handler handler, worker_pool& workers,
                         request_observer observer)
    : impl_(std::make_unique<impl>(std::move(options), std::move(handler), workers, std::move(observer))) {}

http_server::~http_server() {
  stop(std::chrono::milliseconds{0});
  wait();
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
  asio::co_spawn(i.ioc, i.accept_loop(), asio::detached);
  unsigned n = std::max(1u, i.options.io_threads);
  for (unsigned t = 0; t < n; ++t) i.threads.emplace_back([&i] { i.ioc.run(); });
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
  asio::post(i.ioc, [&i] {
    beast::error_code ignored;
    i.acceptor.close(ignored);
  });
  auto deadline = std::chrono::steady_clock::now() + drain;
  while (i.in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  i.work.reset();
  i.ioc.stop();
}

int wait_for_termination_signal() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  int sig = 0;
  sigwait(&signals, &sig);
  return sig;
}

}  // namespace yilian::gateway
