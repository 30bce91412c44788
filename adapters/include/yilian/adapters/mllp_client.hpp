// A small blocking MLLP client: connect, send a message, receive its ACK with a timeout. Used by
// the tests, the benchmark and `yilian send`. One connection, one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace yilian::adapters {

// Connection refused, closed by the server, timed out, TLS failure: the message says which.
class mllp_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct mllp_client_options {
  std::chrono::milliseconds timeout{30'000};  // connect (+ TLS handshake), and the default for receive()
  bool tls = false;
  // With tls: the PEM file of the certificate authority (or the self-signed server certificate)
  // that the server's certificate must be signed by. Empty: the system's default CAs.
  std::string tls_ca_file;
  // With tls: the name the server's certificate must carry (DNS or IP subjectAltName). Empty: the
  // host passed to the constructor.
  std::string tls_server_name;
};

class mllp_client {
 public:
  // Connects (and does the TLS handshake); throws mllp_error.
  mllp_client(const std::string& host, std::uint16_t port, mllp_client_options options = {});
  ~mllp_client();
  mllp_client(const mllp_client&) = delete;
  mllp_client& operator=(const mllp_client&) = delete;

  // Frames `message` (0x0B message 0x1C 0x0D) and writes it.
  void send(std::string_view message);
  // Writes `bytes` as they are (tests: junk, frames split across writes).
  void send_raw(std::string_view bytes);
  // The next framed reply without its framing; throws mllp_error on timeout or when the
  // connection ends first. Bytes outside frames are skipped.
  std::string receive(std::chrono::milliseconds timeout);
  std::string receive() { return receive(options_.timeout); }
  // send() + receive().
  std::string exchange(std::string_view message);
  // True once the server has closed the connection (reads what is pending, up to `timeout`).
  bool closed_by_server(std::chrono::milliseconds timeout);

 private:
  struct impl;
  mllp_client_options options_;
  std::unique_ptr<impl> impl_;
};

}  // namespace yilian::adapters
