// The only translation unit of the adapters that includes Asio (MLLP listener and client).
// Threading follows gateway/src/http_server.cpp: `io_threads` threads run one io_context, every
// connection is one coroutine on its own strand, and a message is handed to the worker_pool while
// the coroutine waits on a timer that the worker cancels, through a post back to the strand, once
// the ACK is ready. A connection reads nothing new while its message is with a worker, so its
// messages are handled strictly one after the other.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "yilian/adapters/mllp.hpp"
#include "yilian/adapters/mllp_client.hpp"
#include "yilian/gateway/worker_pool.hpp"

namespace yilian::adapters {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t oversize_prefix_bytes = 64 * 1024;
constexpr std::size_t read_chunk_bytes = 16 * 1024;  // per connection, while it waits for bytes

// Splits a received byte stream into MLLP frames. Bytes before a 0x0B are skipped; a message is
// complete at 0x1C 0x0D (a 0x1C followed by anything else is message content). A message longer
// than the limit is not kept: its first bytes are, and the rest is counted and dropped up to its end.
class frame_reader {
 public:
  enum class result { need_more, message, oversize };

  explicit frame_reader(std::size_t max_message_bytes) : max_(max_message_bytes) {}

  void append(const char* data, std::size_t n) { buffer_.append(data, n); }

  // The next complete frame in what was appended so far.
  result next() {
    for (;;) {
      if (state_ == state::seeking) {
        auto start = buffer_.find(mllp_start_block, consumed_);
        if (start == std::string::npos) {
          skipped_ += buffer_.size() - consumed_;
          buffer_.clear();
          consumed_ = scan_ = 0;
          return result::need_more;
        }
        skipped_ += start - consumed_;
        consumed_ = scan_ = start + 1;
        state_ = state::reading;
      }
      auto end = find_end();
      if (state_ == state::reading) {
        if (end != std::string::npos && end - consumed_ <= max_) {
          message_.assign(buffer_, consumed_, end - consumed_);
          finish_frame(end);
          return result::message;
        }
        if (end == std::string::npos && scan_ - consumed_ <= max_) {
          compact();
          return result::need_more;
        }
        prefix_.assign(buffer_, consumed_, oversize_prefix_bytes);
        oversize_bytes_ = 0;
        state_ = state::discarding;
      }
      // discarding: count and drop everything up to the end of the oversized message
      if (end != std::string::npos) {
        oversize_bytes_ += end - consumed_;
        finish_frame(end);
        return result::oversize;
      }
      oversize_bytes_ += scan_ - consumed_;
      buffer_.erase(0, scan_);
      consumed_ = scan_ = 0;
      return result::need_more;
    }
  }

  // True between a message's 0x0B and its end: the read timeout applies, not the idle one.
  bool in_message() const noexcept { return state_ != state::seeking; }
  std::string take_message() { return std::move(message_); }
  const std::string& oversize_prefix() const noexcept { return prefix_; }
  std::size_t oversize_bytes() const noexcept { return oversize_bytes_; }
  std::size_t skipped_bytes() const noexcept { return skipped_; }
  // Bytes received and not yet part of a returned frame (a following message already arrived).
  bool has_pending_bytes() const noexcept { return consumed_ < buffer_.size(); }

 private:
  enum class state { seeking, reading, discarding };

  // Position of the 0x1C of "0x1C 0x0D" at or after scan_, or npos (scan_ then marks how far the
  // buffer is known to hold no end; a trailing 0x1C is left to be looked at again).
  std::size_t find_end() {
    for (;;) {
      auto end = buffer_.find(mllp_end_block, scan_);
      if (end == std::string::npos) {
        scan_ = buffer_.size();
        return end;
      }
      if (end + 1 == buffer_.size()) {
        scan_ = end;
        return std::string::npos;
      }
      if (buffer_[end + 1] == mllp_carriage_return) return end;
      scan_ = end + 1;
    }
  }

  void finish_frame(std::size_t end) {
    consumed_ = scan_ = end + 2;
    state_ = state::seeking;
    compact();
  }

  // Drops consumed bytes once there are many (never per message: pipelined small messages).
  void compact() {
    if (consumed_ == buffer_.size()) {
      buffer_.clear();
      consumed_ = scan_ = 0;
    } else if (consumed_ > read_chunk_bytes) {
      buffer_.erase(0, consumed_);
      scan_ -= consumed_;
      consumed_ = 0;
    }
  }

  std::size_t max_;
  std::string buffer_;
  std::size_t consumed_ = 0;  // start of the unread part (after 0x0B while reading)
  std::size_t scan_ = 0;      // where the search for the end continues
  state state_ = state::seeking;
  std::string message_;
  std::string prefix_;
  std::size_t oversize_bytes_ = 0;
  std::size_t skipped_ = 0;
};

std::string frame(std::string_view message) {
  std::string framed;
  framed.reserve(message.size() + 3);
  framed.push_back(mllp_start_block);
  framed.append(message);
  framed.push_back(mllp_end_block);
  framed.push_back(mllp_carriage_return);
  return framed;
}

// Increments a counter for the lifetime of a scope.
struct counted {
  std::atomic<int>& counter;
  explicit counted(std::atomic<int>& c) : counter(c) { ++counter; }
  ~counted() { --counter; }
  counted(const counted&) = delete;
  counted& operator=(const counted&) = delete;
};

// One accepted connection: plain TCP or TLS over TCP.
struct connection {
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;

  beast::tcp_stream& tcp() { return tls ? beast::get_lowest_layer(*tls) : *plain; }
};

std::string describe(const mllp_peer& peer) {
  return "mllp connection " + std::to_string(peer.connection) + " (" + peer.address + ":" +
         std::to_string(peer.port) + (peer.tls ? ", TLS" : "") + ")";
}

void log_line(const std::string& text) noexcept {
  try {
    std::cerr << text << std::endl;
  } catch (...) {
  }
}

}  // namespace

struct mllp_server::impl {
  mllp_options options;
  message_handler handler;
  gateway::worker_pool& workers;
  mllp_hooks hooks;

  std::vector<std::thread> threads;
  std::uint16_t bound_port = 0;
  std::optional<ssl::context> tls_context;

  std::atomic<bool> stopping{false};
  std::atomic<int> in_flight{0};  // messages handed to a worker whose ACK is not written yet
  std::atomic<int> sessions{0};
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> acknowledged{0};

  // Open connections, so stop() can close them. Guarded by connections_mutex.
  std::mutex connections_mutex;
  bool closing_connections = false;
  std::unordered_map<std::uint64_t, std::weak_ptr<connection>> connections;

  // Work handed to workers and not yet posted back: the io_context must outlive it.
  std::mutex tasks_mutex;
  std::condition_variable tasks_done;
  int pending_tasks = 0;

  // Last, so they go first: destroying the io_context destroys suspended connection coroutines,
  // whose frames still use the members above.
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  asio::strand<asio::io_context::executor_type> accept_strand{ioc.get_executor()};
  tcp::acceptor acceptor{ioc};

  impl(mllp_options o, message_handler h, gateway::worker_pool& w, mllp_hooks k)
      : options(std::move(o)), handler(std::move(h)), workers(w), hooks(std::move(k)) {}

  void load_tls() {
    if (options.tls_certificate_file.empty() && options.tls_private_key_file.empty()) return;
    if (options.tls_certificate_file.empty() || options.tls_private_key_file.empty())
      throw std::runtime_error("MLLP TLS needs both a certificate file and a private key file");
    tls_context.emplace(ssl::context::tls_server);
    tls_context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                             ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
    boost::system::error_code ec;
    tls_context->use_certificate_chain_file(options.tls_certificate_file, ec);
    if (ec)
      throw std::runtime_error("MLLP TLS certificate file " + options.tls_certificate_file + ": " + ec.message());
    tls_context->use_private_key_file(options.tls_private_key_file, ssl::context::pem, ec);
    if (ec)
      throw std::runtime_error("MLLP TLS private key file " + options.tls_private_key_file + ": " + ec.message());
  }

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

  // Runs `task` on a worker and resumes on this connection's strand with its result. `task` must
  // not throw.
  asio::awaitable<std::string> run_on_worker(std::function<std::string()> task) {
    auto executor = co_await asio::this_coro::executor;
    struct state {
      explicit state(const asio::any_io_executor& ex) : timer(ex, asio::steady_timer::time_point::max()) {}
      asio::steady_timer timer;
      std::string result;
      bool done = false;
    };
    auto st = std::make_shared<state>(executor);
    {
      std::lock_guard lock(tasks_mutex);
      ++pending_tasks;
    }
    workers.submit([this, task = std::move(task), st, executor]() mutable {
      std::string result = task();
      asio::post(executor, [st, result = std::move(result)]() mutable {
        st->result = std::move(result);
        st->done = true;
        st->timer.cancel();
      });
      // Drop this task's handles on the io_context before the count lets ~mllp_server destroy
      // it (the worker destroys the task itself only after this function returns).
      st.reset();
      executor = asio::any_io_executor();
      std::lock_guard lock(tasks_mutex);
      if (--pending_tasks == 0) tasks_done.notify_all();
    });
    while (!st->done) co_await st->timer.async_wait(use_tuple);
    co_return std::move(st->result);
  }

  // The ACK for a message, or "" to close the connection without one. On a worker.
  std::string handle_message(const std::string& message, const mllp_peer& peer) noexcept {
    std::string what;
    try {
      std::string ack = handler(message, peer);
      if (!ack.empty()) return ack;
      log_line(describe(peer) + ": the handler returned no ACK for a message of " + std::to_string(message.size()) +
               " bytes; closing without an ACK");
      return {};
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "unknown exception";
    }
    log_line(describe(peer) + ": the handler failed on a message of " + std::to_string(message.size()) +
             " bytes: " + what);
    return call_hook("failure", [&] {
      return hooks.handler_failure ? hooks.handler_failure(message, what, peer) : std::string();
    }, peer);
  }

  std::string handle_oversize(const std::string& prefix, std::size_t bytes, const mllp_peer& peer) noexcept {
    log_line(describe(peer) + ": message of " + std::to_string(bytes) + " bytes exceeds the limit of " +
             std::to_string(options.max_message_bytes) + " bytes; discarded");
    return call_hook("oversize", [&] { return hooks.oversize ? hooks.oversize(prefix, bytes, peer) : std::string(); },
                     peer);
  }

  template <class Hook>
  std::string call_hook(std::string_view name, Hook&& hook, const mllp_peer& peer) noexcept {
    std::string what;
    try {
      std::string ack = hook();
      if (!ack.empty()) return ack;
      log_line(describe(peer) + ": no " + std::string(name) + " ACK; closing the connection without an ACK");
      return {};
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "unknown exception";
    }
    log_line(describe(peer) + ": the " + std::string(name) + " hook failed (" + what +
             "); closing the connection without an ACK");
    return {};
  }

  template <class Stream>
  asio::awaitable<void> serve(Stream& stream, beast::tcp_stream& tcp, const mllp_peer& peer) {
    using clock = std::chrono::steady_clock;
    frame_reader reader(options.max_message_bytes);
    std::vector<char> chunk(read_chunk_bytes);
    auto idle_deadline = clock::now() + options.idle_timeout;
    std::optional<clock::time_point> message_deadline;
    bool skipped_logged = false;
    for (;;) {
      auto got = reader.next();
      if (!skipped_logged && reader.skipped_bytes() > 0) {
        skipped_logged = true;
        log_line(describe(peer) + ": skipped " + std::to_string(reader.skipped_bytes()) +
                 " bytes before a 0x0B start block (logged once per connection)");
      }
      if (got == frame_reader::result::need_more) {
        if (reader.in_message()) {
          if (!message_deadline) message_deadline = clock::now() + options.read_timeout;
          tcp.expires_at(*message_deadline);
        } else {
          tcp.expires_at(idle_deadline);
        }
        auto [ec, n] = co_await stream.async_read_some(asio::buffer(chunk), use_tuple);
        if (ec) {
          if (ec == beast::error::timeout)
            log_line(describe(peer) + (reader.in_message() ? ": message not complete within the read timeout"
                                                           : ": idle timeout") + "; closing");
          else if (reader.in_message() && !stopping.load())
            log_line(describe(peer) + ": the sender closed the connection in the middle of a message (" +
                     ec.message() + ")");
          co_return;  // closed by the sender, timeout, or stop()
        }
        reader.append(chunk.data(), n);
        continue;
      }
      message_deadline.reset();

      counted busy(in_flight);  // before the check: stop() sees either this message or `stopping`
      if (stopping.load()) co_return;  // not handed out, not ACKed: the sender re-sends it
      tcp.expires_never();
      // A named task, not a temporary in the co_await expression: g++ 12 destroys such
      // temporaries twice.
      std::function<std::string()> task;
      if (got == frame_reader::result::message) {
        task = [this, message = reader.take_message(), &peer] { return handle_message(message, peer); };
      } else {
        task = [this, prefix = reader.oversize_prefix(), bytes = reader.oversize_bytes(), &peer] {
          return handle_oversize(prefix, bytes, peer);
        };
      }
      std::string ack = co_await run_on_worker(std::move(task));
      if (ack.empty()) co_return;
      std::string framed = frame(ack);
      tcp.expires_after(options.read_timeout);
      auto [wec, written] = co_await asio::async_write(stream, asio::buffer(framed), use_tuple);
      if (wec) {
        log_line(describe(peer) + ": writing the ACK failed: " + wec.message());
        co_return;
      }
      ++acknowledged;
      idle_deadline = clock::now() + options.idle_timeout;
      if (stopping.load()) co_return;
    }
  }

  asio::awaitable<void> session(tcp::socket socket) {
    counted live(sessions);
    auto conn = std::make_shared<connection>();
    mllp_peer peer;
    {
      boost::system::error_code ec;
      auto remote = socket.remote_endpoint(ec);
      if (!ec) {
        peer.address = remote.address().to_string();
        peer.port = remote.port();
      }
    }
    if (tls_context) {
      conn->tls.emplace(std::move(socket), *tls_context);
      peer.tls = true;
    } else {
      conn->plain.emplace(std::move(socket));
    }
    {
      std::lock_guard lock(connections_mutex);
      if (closing_connections) co_return;
      peer.connection = ++accepted;
      connections.emplace(peer.connection, conn);
    }
    struct unregister {
      impl& self;
      std::uint64_t id;
      ~unregister() {
        std::lock_guard lock(self.connections_mutex);
        self.connections.erase(id);
      }
    } unregister_on_exit{*this, peer.connection};

    if (conn->tls) {
      conn->tcp().expires_after(options.read_timeout);
      auto [ec] = co_await conn->tls->async_handshake(ssl::stream_base::server, use_tuple);
      if (ec) {
        log_line(describe(peer) + ": TLS handshake failed: " + ec.message());
      } else {
        co_await serve(*conn->tls, conn->tcp(), peer);
      }
    } else {
      co_await serve(*conn->plain, conn->tcp(), peer);
    }
    boost::system::error_code ignored;
    conn->tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
    conn->tcp().close();
  }

  // Closes every open connection on its strand; a message still with a worker ends when the
  // worker posts back (its ACK write fails).
  void close_connections() {
    std::lock_guard lock(connections_mutex);
    closing_connections = true;
    for (auto& [id, weak] : connections) {
      if (auto conn = weak.lock()) {
        asio::post(conn->tcp().get_executor(), [weak = std::weak_ptr<connection>(conn)] {
          if (auto c = weak.lock()) {
            boost::system::error_code ignored;
            c->tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
            c->tcp().close();
          }
        });
      }
    }
  }
};

mllp_server::mllp_server(mllp_options options, message_handler handler, gateway::worker_pool& workers,
                         mllp_hooks hooks)
    : impl_(std::make_unique<impl>(std::move(options), std::move(handler), workers, std::move(hooks))) {}

mllp_server::~mllp_server() {
  stop(std::chrono::milliseconds{0});
  wait();
  std::unique_lock lock(impl_->tasks_mutex);
  impl_->tasks_done.wait(lock, [this] { return impl_->pending_tasks == 0; });
}

void mllp_server::start() {
  auto& i = *impl_;
  i.load_tls();
  tcp::endpoint endpoint{asio::ip::make_address(i.options.host), i.options.port};
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

std::uint16_t mllp_server::port() const noexcept { return impl_->bound_port; }

std::uint64_t mllp_server::connections_accepted() const noexcept { return impl_->accepted.load(); }

std::uint64_t mllp_server::messages_acknowledged() const noexcept { return impl_->acknowledged.load(); }

void mllp_server::wait() {
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
  impl_->threads.clear();
}

void mllp_server::stop(std::chrono::milliseconds drain) {
  auto& i = *impl_;
  if (i.stopping.exchange(true)) return;
  asio::post(i.accept_strand, [&i] {
    boost::system::error_code ignored;
    i.acceptor.close(ignored);
  });
  auto deadline = std::chrono::steady_clock::now() + drain;
  while (i.in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  i.close_connections();
  i.work.reset();
  auto grace = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (i.sessions.load() > 0 && std::chrono::steady_clock::now() < grace)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  i.ioc.stop();
}

// ---- client ----

struct mllp_client::impl {
  asio::io_context ioc;
  std::optional<ssl::context> tls_context;
  std::optional<tcp::socket> plain;
  std::optional<ssl::stream<tcp::socket>> tls;
  std::string received;  // bytes read and not yet returned
  bool broken = false;   // a TLS operation timed out and was cancelled

  tcp::socket& socket() { return tls ? tls->next_layer() : *plain; }

  // Runs one asynchronous operation to completion within `timeout`; throws mllp_error on timeout.
  template <class Start>
  std::pair<boost::system::error_code, std::size_t> run(Start&& start, std::chrono::milliseconds timeout,
                                                         std::string_view what) {
    if (broken) throw mllp_error("MLLP connection unusable after an earlier timeout");
    boost::system::error_code result;
    std::size_t bytes = 0;
    bool done = false;
    start([&](boost::system::error_code ec, std::size_t n) {
      result = ec;
      bytes = n;
      done = true;
    });
    ioc.restart();
    ioc.run_for(timeout);
    if (!done) {
      // A cancelled TCP read leaves the connection usable (nothing was consumed); a write may have
      // sent part of a frame, and a TLS stream after a cancelled operation is in no defined state.
      broken = tls.has_value() || what == "write";
      boost::system::error_code ignored;
      socket().cancel(ignored);
      ioc.restart();
      ioc.run();
      throw mllp_error("MLLP " + std::string(what) + " timed out after " + std::to_string(timeout.count()) + " ms");
    }
    return {result, bytes};
  }

  template <class Op>
  auto with_stream(Op&& op) {
    if (tls) return op(*tls);
    return op(*plain);
  }

  // A complete frame in `received`, extracted, or nullopt.
  std::optional<std::string> take_frame() {
    auto start = received.find(mllp_start_block);
    if (start == std::string::npos) {
      received.clear();
      return std::nullopt;
    }
    auto end = received.find("\x1c\x0d", start + 1);
    if (end == std::string::npos) {
      received.erase(0, start);
      return std::nullopt;
    }
    std::string message = received.substr(start + 1, end - start - 1);
    received.erase(0, end + 2);
    return message;
  }
};

mllp_client::mllp_client(const std::string& host, std::uint16_t port, mllp_client_options options)
    : options_(std::move(options)), impl_(std::make_unique<impl>()) {
  auto& i = *impl_;
  boost::system::error_code ec;
  tcp::resolver resolver(i.ioc);
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (ec) throw mllp_error("MLLP cannot resolve " + host + ": " + ec.message());
  if (options_.tls) {
    i.tls_context.emplace(ssl::context::tls_client);
    i.tls_context->set_verify_mode(ssl::verify_peer);
    if (options_.tls_ca_file.empty())
      i.tls_context->set_default_verify_paths(ec);
    else
      i.tls_context->load_verify_file(options_.tls_ca_file, ec);
    if (ec) throw mllp_error("MLLP TLS certificate authority " + options_.tls_ca_file + ": " + ec.message());
    i.tls.emplace(i.ioc, *i.tls_context);
    const std::string& name = options_.tls_server_name.empty() ? host : options_.tls_server_name;
    i.tls->set_verify_callback(ssl::host_name_verification(name));
    SSL_set_tlsext_host_name(i.tls->native_handle(), name.c_str());
  } else {
    i.plain.emplace(i.ioc);
  }
  auto [cec, unused] = i.run(
      [&](auto handler) {
        asio::async_connect(i.socket(), endpoints,
                            [handler](boost::system::error_code e, const tcp::endpoint&) { handler(e, 0); });
      },
      options_.timeout, "connect");
  if (cec) throw mllp_error("MLLP cannot connect to " + host + ":" + std::to_string(port) + ": " + cec.message());
  i.socket().set_option(tcp::no_delay(true), ec);
  if (i.tls) {
    auto [hec, none] = i.run(
        [&](auto handler) {
          i.tls->async_handshake(ssl::stream_base::client, [handler](boost::system::error_code e) { handler(e, 0); });
        },
        options_.timeout, "TLS handshake");
    if (hec) throw mllp_error("MLLP TLS handshake with " + host + " failed: " + hec.message());
  }
}

mllp_client::~mllp_client() {
  boost::system::error_code ignored;
  impl_->socket().close(ignored);
}

void mllp_client::send(std::string_view message) { send_raw(frame(message)); }

void mllp_client::send_raw(std::string_view bytes) {
  auto& i = *impl_;
  auto [ec, n] = i.run(
      [&](auto handler) {
        i.with_stream([&](auto& stream) { asio::async_write(stream, asio::buffer(bytes.data(), bytes.size()), handler); });
      },
      options_.timeout, "write");
  if (ec) throw mllp_error("MLLP write failed: " + ec.message());
}

std::string mllp_client::receive(std::chrono::milliseconds timeout) {
  auto& i = *impl_;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::array<char, 16 * 1024> chunk;
  for (;;) {
    if (auto message = i.take_frame()) return std::move(*message);
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw mllp_error("MLLP receive timed out after " + std::to_string(timeout.count()) + " ms");
    auto [ec, n] = i.run(
        [&](auto handler) { i.with_stream([&](auto& stream) { stream.async_read_some(asio::buffer(chunk), handler); }); },
        left, "receive");
    if (ec) throw mllp_error("MLLP connection ended before a reply: " + ec.message());
    i.received.append(chunk.data(), n);
  }
}

std::string mllp_client::exchange(std::string_view message) {
  send(message);
  return receive();
}

bool mllp_client::closed_by_server(std::chrono::milliseconds timeout) {
  auto& i = *impl_;
  std::array<char, 16 * 1024> chunk;
  try {
    for (;;) {
      auto [ec, n] = i.run(
          [&](auto handler) { i.with_stream([&](auto& stream) { stream.async_read_some(asio::buffer(chunk), handler); }); },
          timeout, "read");
      if (ec) return true;
      i.received.append(chunk.data(), n);
    }
  } catch (const mllp_error&) {
    return false;
  }
}

}  // namespace yilian::adapters
