// MLLP listener (HL7 v2 Minimal Lower Layer Protocol: 0x0B message 0x1C 0x0D) behind an
// Asio-free interface. Each connection is one coroutine on the I/O threads; each received
// message is handed to a `gateway::worker_pool` (the handler blocks on PostgreSQL) and its ACK is
// written before the next message of that connection is handed out, so a sender that uses one
// connection has its messages applied strictly in the order it sent them.
//
// What the listener does with bad input, so hospital IT knows what their sender will see:
// - Bytes before 0x0B (keep-alive noise, a stray CR) are skipped; logged once per connection.
// - A message larger than `max_message_bytes` is read to its end and discarded; the sender gets
//   the ACK returned by the oversize hook (an AR built from the MSH segment at the start of the
//   message), then the connection goes on. Without a hook, or if the hook returns nothing, the
//   connection is closed with a log line.
// - A message that does not end within `read_timeout` after its 0x0B: the connection is closed.
// - No new message within `idle_timeout`: the connection is closed.
// - The handler throws: the sender gets the ACK returned by the failure hook (an AE/AR naming
//   the problem); without a hook, or if the hook returns nothing, the connection is closed without
//   an ACK and a log line names the connection, so the sender re-sends the message later.
//   A handler returning an empty string is treated the same way: no ACK, connection closed.
// Nothing on this path throws into the I/O threads or ends the process.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace yilian::gateway {
class worker_pool;
}

namespace yilian::adapters {

inline constexpr char mllp_start_block = '\x0b';
inline constexpr char mllp_end_block = '\x1c';
inline constexpr char mllp_carriage_return = '\x0d';

struct mllp_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 2575;  // the registered HL7 port; 0 = pick a free port (tests)
  unsigned io_threads = 1;
  std::size_t max_message_bytes = 16 * 1024 * 1024;  // between the framing bytes
  // From a message's 0x0B to its 0x1C 0x0D; also the limit for writing one ACK and for the TLS
  // handshake.
  std::chrono::milliseconds read_timeout{30'000};
  // Waiting for the next message's 0x0B (bytes skipped before it do not extend it).
  std::chrono::milliseconds idle_timeout{600'000};
  // TLS (PEM files): both set = every connection is TLS; both empty = plain TCP (the default).
  std::string tls_certificate_file;  // the server certificate, optionally followed by its chain
  std::string tls_private_key_file;
};

// Who sent a message: handed to the handler with each message.
struct mllp_peer {
  std::string address;            // remote IP address
  std::uint16_t port = 0;         // remote port
  std::uint64_t connection = 0;   // numbers the listener's connections from 1, for logs
  bool tls = false;
};

// Returns the ACK (without framing) for `message` (without framing). Runs on a worker thread.
using message_handler = std::function<std::string(std::string_view message, const mllp_peer& peer)>;

struct mllp_hooks {
  // A message larger than max_message_bytes: receives the message's first bytes (up to 64 KiB,
  // enough for its MSH segment) and its total size; returns the AR ACK, or "" to close.
  std::function<std::string(std::string_view message_start, std::size_t message_bytes, const mllp_peer& peer)>
      oversize;
  // The handler threw `what` for `message`: returns the error ACK, or "" to close.
  std::function<std::string(std::string_view message, std::string_view what, const mllp_peer& peer)> handler_failure;
};

class mllp_server {
 public:
  // Hooks run on worker threads, like the handler.
  mllp_server(mllp_options options, message_handler handler, gateway::worker_pool& workers, mllp_hooks hooks = {});
  ~mllp_server();  // stop(0) + wait(); waits for handlers still running on workers
  mllp_server(const mllp_server&) = delete;
  mllp_server& operator=(const mllp_server&) = delete;

  // Binds and starts accepting. Throws std::system_error when the address is unusable and
  // std::runtime_error when the TLS files cannot be loaded.
  void start();
  // The bound port (useful with port 0).
  std::uint16_t port() const noexcept;
  // Graceful: stop accepting; messages already handed to a worker get their ACK written (waiting
  // up to `drain`); then every connection is closed. Messages received but not yet handed out are
  // not ACKed (the sender re-sends them). Safe to call from any thread and more than once.
  void stop(std::chrono::milliseconds drain = std::chrono::milliseconds{10'000});
  // Blocks until stop() completes.
  void wait();

  // Counters for /metrics and tests.
  std::uint64_t connections_accepted() const noexcept;
  std::uint64_t messages_acknowledged() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace yilian::adapters
