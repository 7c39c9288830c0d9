# TROUPE_CUDA=AUTO builds CUDA code paths when a toolkit is found (the default
# location /usr/local/cuda is searched); ON requires one; OFF never builds them.
# With CUDA built but no device at run time, CPU paths run and GPU tests skip.
set(TROUPE_HAVE_CUDA OFF)
if(NOT TROUPE_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  if(NOT CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  find_package(CUDAToolkit QUIET)
  if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 75 80 90)
    endif()
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # one CUDA runtime per program: CUDA::cudart
    enable_language(CUDA)
    # CMake 3.25 knows no nvcc flag for the CUDA20 dialect that CXX_STANDARD 20
    # implies for .cu sources; nvcc 13 accepts -std=c++20.
    if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(TROUPE_HAVE_CUDA ON)
    # Recorded in troupeConfig.cmake, so consumers find the same toolkit.
    get_filename_component(TROUPE_CUDA_TOOLKIT_ROOT "${CUDAToolkit_BIN_DIR}" DIRECTORY)
  elseif(TROUPE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "TROUPE_CUDA=ON but no CUDA toolkit was found (looked in /usr/local/cuda and on PATH)")
  endif()
endif()
message(STATUS "troupe: CUDA code paths ${TROUPE_HAVE_CUDA}")
