// Checkpoint files: the format, atomic writes and the checks on reading; see
// checkpoint.hpp.
#include "troupe/actors/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"

namespace troupe::actors {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'T', 'R', 'O', 'U', 'P', 'E', 'C', 'K'};
constexpr std::size_t kHeaderBytes = 8 + 4 + 4 + 8 + 8;
constexpr std::string_view kPrefix = "step-";
constexpr std::string_view kSuffix = ".ckpt";
constexpr int kMaxRank = 8;

std::uint64_t fnv1a64(const std::string& bytes, std::size_t begin) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (std::size_t i = begin; i < bytes.size(); ++i) {
    hash ^= static_cast<unsigned char>(bytes[i]);
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

template <class T>
void put(std::string& out, T value) {
  static_assert(std::is_trivially_copyable_v<T>);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
  out.append(bytes, sizeof(T));
}

// Reads the payload of one file; every length is checked against what is left.
class Reader {
 public:
  Reader(const std::string& bytes, std::size_t offset, std::string file)
      : bytes_(bytes), offset_(offset), file_(std::move(file)) {}

  template <class T>
  T get(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return value;
  }
  std::string get_bytes(std::size_t n, const char* what) {
    need(n, what);
    std::string out = bytes_.substr(offset_, n);
    offset_ += n;
    return out;
  }
  const char* here() const { return bytes_.data() + offset_; }
  void skip(std::size_t n, const char* what) {
    need(n, what);
    offset_ += n;
  }
  std::size_t left() const { return bytes_.size() - offset_; }
  [[noreturn]] void refuse(const std::string& why) const {
    throw_error(Errc::serialization, "checkpoint " + file_ + " refused: " + why);
  }

 private:
  void need(std::size_t n, const char* what) const {
    if (left() < n) refuse(std::string("it ends inside ") + what + " (torn or truncated)");
  }
  const std::string& bytes_;
  std::size_t offset_;
  std::string file_;
};

[[noreturn]] void io_failure(const std::string& what, const fs::path& path, int error) {
  throw_error(Errc::internal, "checkpoint: " + what + " " + path.string() + ": " + std::strerror(error));
}

void write_all(int fd, const std::string& bytes, const fs::path& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) io_failure("cannot write", path, n < 0 ? errno : EIO);
    done += static_cast<std::size_t>(n);
  }
}

void fsync_directory(const fs::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_failure("cannot open directory", directory, errno);
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) io_failure("cannot fsync directory", directory, error);
}

// The step a file name names, or -1 for any other name.
std::int64_t step_of(const std::string& name) {
  if (name.size() != kPrefix.size() + 20 + kSuffix.size() || !name.starts_with(kPrefix) || !name.ends_with(kSuffix)) {
    return -1;
  }
  std::int64_t step = 0;
  for (std::size_t i = kPrefix.size(); i < kPrefix.size() + 20; ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return -1;
    if (step > (INT64_MAX - (c - '0')) / 10) return -1;
    step = step * 10 + (c - '0');
  }
  return step;
}

std::atomic<std::uint64_t> temp_counter{0};

}  // namespace

fs::path checkpoint_path(const fs::path& directory, std::int64_t step) {
  std::string digits = std::to_string(step);
  if (digits.size() < 20) digits.insert(0, 20 - digits.size(), '0');
  return directory / (std::string(kPrefix) + digits + std::string(kSuffix));
}

void write_checkpoint(const fs::path& directory, const CheckpointData& data) {
  if (data.step < 0) throw_error(Errc::invalid_argument, "checkpoint: step " + std::to_string(data.step) + " < 0");
  std::string payload;
  put<std::uint32_t>(payload, static_cast<std::uint32_t>(data.kind.size()));
  payload += data.kind;
  put<std::int64_t>(payload, data.step);
  put<std::uint32_t>(payload, static_cast<std::uint32_t>(data.tensors.size()));
  for (const Tensor& tensor : data.tensors) {
    if (!tensor.defined()) throw_error(Errc::invalid_argument, "checkpoint: an undefined tensor cannot be saved");
    const Tensor host = tensor.device().is_cpu() ? tensor : tensor.to(Device::cpu());
    put<std::uint8_t>(payload, static_cast<std::uint8_t>(host.dtype()));
    put<std::uint8_t>(payload, static_cast<std::uint8_t>(host.dim()));
    for (const std::int64_t extent : host.shape()) put<std::int64_t>(payload, extent);
    payload.append(static_cast<const char*>(host.raw_data()), host.nbytes());
  }
  std::string file(kMagic, sizeof kMagic);
  put<std::uint32_t>(file, kCheckpointVersion);
  put<std::uint32_t>(file, 0);
  put<std::uint64_t>(file, payload.size());
  put<std::uint64_t>(file, fnv1a64(payload, 0));
  file += payload;

  std::error_code error;
  fs::create_directories(directory, error);
  if (error) io_failure("cannot create directory", directory, error.value());
  const fs::path target = checkpoint_path(directory, data.step);
  const fs::path temp = target.string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                        std::to_string(temp_counter.fetch_add(1));
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) io_failure("cannot create", temp, errno);
  try {
    write_all(fd, file, temp);
    if (::fsync(fd) != 0) io_failure("cannot fsync", temp, errno);
  } catch (...) {
    ::close(fd);
    fs::remove(temp, error);
    throw;
  }
  ::close(fd);
  if (::rename(temp.c_str(), target.c_str()) != 0) {
    const int rename_error = errno;
    fs::remove(temp, error);
    io_failure("cannot rename a temporary file to", target, rename_error);
  }
  fsync_directory(directory);
}

CheckpointData read_checkpoint(const fs::path& file, std::string_view kind) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw_error(Errc::not_found, "checkpoint " + file.string() + " does not exist or cannot be read");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Reader header(bytes, 0, file.string());
  if (bytes.size() < kHeaderBytes) header.refuse("it is " + std::to_string(bytes.size()) + " bytes, shorter than the header (torn or truncated)");
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) header.refuse("it is not a troupe checkpoint (bad magic)");
  header.skip(sizeof kMagic, "the magic");
  const auto version = header.get<std::uint32_t>("the version");
  if (version != kCheckpointVersion) {
    header.refuse("format version " + std::to_string(version) + "; this build reads version " +
                  std::to_string(kCheckpointVersion));
  }
  (void)header.get<std::uint32_t>("the header");
  const auto payload_bytes = header.get<std::uint64_t>("the payload size");
  const auto checksum = header.get<std::uint64_t>("the checksum");
  if (payload_bytes != bytes.size() - kHeaderBytes) {
    header.refuse("the header announces " + std::to_string(payload_bytes) + " payload bytes, the file has " +
                  std::to_string(bytes.size() - kHeaderBytes) + " (torn or truncated)");
  }
  if (fnv1a64(bytes, kHeaderBytes) != checksum) header.refuse("checksum mismatch (the file is corrupt)");

  Reader payload(bytes, kHeaderBytes, file.string());
  CheckpointData data;
  const auto kind_size = payload.get<std::uint32_t>("the kind");
  data.kind = payload.get_bytes(kind_size, "the kind");
  if (data.kind != kind) payload.refuse("it holds a " + data.kind + ", not a " + std::string(kind));
  data.step = payload.get<std::int64_t>("the step");
  if (data.step < 0) payload.refuse("negative step " + std::to_string(data.step));
  const auto count = payload.get<std::uint32_t>("the tensor count");
  for (std::uint32_t t = 0; t < count; ++t) {
    const auto dtype_code = payload.get<std::uint8_t>("a tensor's dtype");
    if (dtype_code > static_cast<std::uint8_t>(DType::u8)) payload.refuse("unknown dtype " + std::to_string(dtype_code));
    const auto rank = payload.get<std::uint8_t>("a tensor's rank");
    if (rank > kMaxRank) payload.refuse("tensor rank " + std::to_string(rank) + " > " + std::to_string(kMaxRank));
    Tensor::Shape shape;
    std::uint64_t elements = 1;
    for (int d = 0; d < rank; ++d) {
      const auto extent = payload.get<std::int64_t>("a tensor's shape");
      if (extent < 0 || (extent > 0 && elements > payload.left() / static_cast<std::uint64_t>(extent))) {
        payload.refuse("tensor " + std::to_string(t) + " has an impossible shape");
      }
      elements *= static_cast<std::uint64_t>(extent);
      shape.push_back(extent);
    }
    const auto dtype = static_cast<DType>(dtype_code);
    const std::uint64_t nbytes = elements * element_size(dtype);
    if (nbytes > payload.left()) payload.refuse("tensor " + std::to_string(t) + "'s bytes run past the end");
    Tensor tensor = Tensor::empty(shape, dtype);
    if (nbytes > 0) std::memcpy(tensor.raw_data(), payload.here(), nbytes);
    payload.skip(nbytes, "a tensor's bytes");
    data.tensors.push_back(std::move(tensor));
  }
  if (payload.left() != 0) payload.refuse(std::to_string(payload.left()) + " bytes after the last tensor");
  return data;
}

std::vector<std::int64_t> list_checkpoints(const fs::path& directory) {
  std::vector<std::int64_t> steps;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(directory, error)) {
    const std::int64_t step = step_of(entry.path().filename().string());
    if (step >= 0) steps.push_back(step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

// ---- CheckpointStore --------------------------------------------------------------------

CheckpointStore::CheckpointStore(CheckpointSpec spec, std::string kind) : spec_(std::move(spec)), kind_(std::move(kind)) {
  if (spec_.every < 0) throw_error(Errc::invalid_argument, kind_ + ": checkpoint every must be >= 0");
  if (spec_.keep < 1) throw_error(Errc::invalid_argument, kind_ + ": checkpoint keep must be >= 1");
  if (spec_.every > 0 && spec_.directory.empty()) {
    throw_error(Errc::invalid_argument, kind_ + ": checkpoints every " + std::to_string(spec_.every) +
                                            " steps need a directory");
  }
}

bool CheckpointStore::mark_started() {
  if (!enabled()) return false;
  const fs::path directory(spec_.directory);
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) io_failure("cannot create directory", directory, error.value());
  const fs::path marker = directory / "started";
  const int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST) return true;
    io_failure("cannot create", marker, errno);
  }
  ::close(fd);
  fsync_directory(directory);
  return false;
}

void CheckpointStore::quarantine(std::int64_t step) const {
  const fs::path file = checkpoint_path(spec_.directory, step);
  std::error_code error;
  fs::rename(file, file.string() + ".corrupt", error);
  if (error) fs::remove(file, error);
}

std::optional<CheckpointData> CheckpointStore::load_newest(std::string* note) {
  if (!enabled()) return std::nullopt;
  std::vector<std::int64_t> steps = available();
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    try {
      return load(*it);
    } catch (const Error& e) {
      TROUPE_LOG_WARN("{}; using the previous checkpoint", e.message());
      if (note != nullptr) {
        if (!note->empty()) *note += "; ";
        *note += e.message();
      }
    }
  }
  return std::nullopt;
}

CheckpointData CheckpointStore::load(std::int64_t step) {
  const fs::path file = checkpoint_path(spec_.directory, step);
  try {
    CheckpointData data = read_checkpoint(file, kind_);
    if (data.step != step) {
      throw_error(Errc::serialization, "checkpoint " + file.string() + " refused: it holds step " +
                                           std::to_string(data.step));
    }
    return data;
  } catch (const Error& e) {
    if (e.code() == Errc::serialization) quarantine(step);
    throw;
  }
}

void CheckpointStore::save(std::int64_t step, std::vector<Tensor> tensors) {
  write_checkpoint(spec_.directory, CheckpointData{kind_, step, std::move(tensors)});
  const std::vector<std::int64_t> steps = available();
  std::error_code error;
  for (std::size_t i = 0; i + static_cast<std::size_t>(spec_.keep) < steps.size(); ++i) {
    fs::remove(checkpoint_path(spec_.directory, steps[i]), error);
  }
}

void CheckpointStore::forget_after(std::int64_t step) {
  std::error_code error;
  for (const std::int64_t s : available()) {
    if (s > step) fs::remove(checkpoint_path(spec_.directory, s), error);
  }
}

std::vector<std::int64_t> CheckpointStore::available() const {
  return enabled() ? list_checkpoints(spec_.directory) : std::vector<std::int64_t>{};
}

}  // namespace troupe::actors
